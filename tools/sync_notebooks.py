"""Keep the notebooks committable after editing them in JupyterLab (``make notebooks``).

The notebooks in ``notebooks/`` are the source people edit: each ``NN_name.ipynb`` is paired by
jupytext with ``NN_name.py`` (``py:percent``), which gives readable diffs. A JupyterLab save stores
every output, execution counts and run metadata; this script puts a notebook back in the committed
form::

    python tools/sync_notebooks.py            # sync each pair (the newer file wins), strip outputs
    python tools/sync_notebooks.py --execute  # also re-run on the demo data to refresh checked outputs
    python tools/sync_notebooks.py --check    # exit 1 (and say why) if anything is out of sync or unstripped

Stripping keeps the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` (deterministic numbers on the
demo data that ``pytest --nbval-lax notebooks/`` compares with a fresh run), minus anything written to
stderr; every other code cell loses its outputs and execution count. ``--execute`` runs each notebook
with its default parameters on the synthetic demo (``FACECOM_DATA_ROOT=demo``), as nbval does, and
stores the checked cells' outputs.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbformat.notebooknode import NotebookNode

from facecom_utils.common.paths import NOTEBOOKS_DIR, REPO_ROOT

CHECK = "# NBVAL_CHECK_OUTPUT"
PAIRING = "ipynb,py:percent"
# Notebook-level metadata worth keeping; the rest (widgets state, papermill, timings) is run residue.
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "jupytext")
# Cell metadata worth keeping (papermill's "parameters" tag lives in tags).
KEEP_CELL_METADATA = ("tags",)


def is_checked(cell: NotebookNode) -> bool:
    """A code cell whose stored output nbval compares."""
    return cell.cell_type == "code" and CHECK in cell.source


def strip(nb: NotebookNode) -> NotebookNode:
    """The committed form of a notebook: outputs only in checked cells (no stderr), minimal metadata."""
    nb = copy.deepcopy(nb)
    nb.metadata = nbformat.from_dict({k: nb.metadata[k] for k in KEEP_NOTEBOOK_METADATA if k in nb.metadata})
    nb.metadata["jupytext"] = {"formats": PAIRING}
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {k: v for k, v in nb.metadata["language_info"].items()
                                        if k in ("name", "pygments_lexer")}
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({k: cell.metadata[k] for k in KEEP_CELL_METADATA if cell.metadata.get(k)})
        if cell.cell_type != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        if is_checked(cell):
            cell.outputs = [o for o in cell.get("outputs", []) if _kept_output(o)]
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = 1
                    output.metadata = {}
            # nbval compares only cells that ran (an execution count)
            cell.execution_count = 1 if cell.outputs else None
        else:
            cell.outputs = []
            cell.execution_count = None
    return nb


def _kept_output(output: NotebookNode) -> bool:
    if output.output_type == "stream":
        return output.get("name") == "stdout"
    return output.output_type == "execute_result"


def sync_pair(ipynb: Path) -> NotebookNode:
    """Bring ``X.ipynb`` and ``X.py`` in step (inputs from the newer one, outputs from the ipynb)."""
    py = ipynb.with_suffix(".py")
    nb = nbformat.read(ipynb, as_version=4)
    if py.is_file() and py.stat().st_mtime > ipynb.stat().st_mtime:
        text = jupytext.read(py, fmt="py:percent")
        nb = _combine(text, nb)
    return nb


def _combine(text_nb: NotebookNode, outputs_nb: NotebookNode) -> NotebookNode:
    """Inputs from the text notebook, outputs of the ipynb's cells whose source is unchanged."""
    from jupytext.combine import combine_inputs_with_outputs

    return combine_inputs_with_outputs(text_nb, outputs_nb, fmt="py:percent")


def write_pair(ipynb: Path, nb: NotebookNode) -> None:
    """Write the stripped notebook and its ``py:percent`` twin (both only when they change)."""
    nb = nbformat.v4.upgrade(nb) if nb.nbformat_minor < 5 else nb
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    text += "" if text.endswith("\n") else "\n"
    if not ipynb.is_file() or ipynb.read_text(encoding="utf-8") != text:
        ipynb.write_text(text, encoding="utf-8")
    py = ipynb.with_suffix(".py")
    py_text = jupytext.writes(nb, fmt="py:percent")
    if not py.is_file() or py.read_text(encoding="utf-8") != py_text:
        py.write_text(py_text, encoding="utf-8")
    # the text twin must not look older than the ipynb, or JupyterLab's jupytext refuses to open the pair
    stamp = max(ipynb.stat().st_mtime, py.stat().st_mtime)
    os.utime(py, (stamp, stamp))


def problems(ipynb: Path) -> list[str]:
    """What ``--check`` reports for one notebook: unstripped outputs, a stale or missing twin."""
    found = []
    nb = nbformat.read(ipynb, as_version=4)
    if nbformat.writes(strip(nb)) != nbformat.writes(nb):
        found.append(f"{ipynb.name}: holds outputs or metadata a commit should not (run: make notebooks)")
    py = ipynb.with_suffix(".py")
    if not py.is_file():
        found.append(f"{ipynb.name}: its py:percent twin {py.name} is missing (run: make notebooks)")
    else:
        sources = [(c.cell_type, c.source) for c in jupytext.read(py, fmt="py:percent").cells]
        if sources != [(c.cell_type, c.source) for c in nb.cells]:
            found.append(f"{ipynb.name} and {py.name} hold different cells (run: make notebooks)")
    return found


def execute_checked_outputs(nb: NotebookNode, cwd: Path = NOTEBOOKS_DIR) -> NotebookNode:
    """Run ``nb`` with its default parameters on the demo data and store its checked cells' outputs."""
    from nbclient import NotebookClient

    from facecom_utils.reporting.runner import KERNEL_ENV, CurrentEnvKernelManager, _environment

    executed = copy.deepcopy(nb)
    client = NotebookClient(executed, kernel_name="python3", kernel_manager_class=CurrentEnvKernelManager,
                            timeout=1800, resources={"metadata": {"path": str(cwd)}})
    with _environment({**KERNEL_ENV, "FACECOM_DATA_ROOT": "demo"}):
        client.execute()
    for cell, ran in zip(nb.cells, executed.cells):
        if is_checked(cell):
            if any(o.output_type == "stream" and o.get("name") == "stderr" for o in ran.outputs):
                raise RuntimeError(f"a checked cell wrote to stderr; nbval would compare it:\n{cell.source}")
            cell.outputs = ran.outputs
            cell.execution_count = 1
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--execute", action="store_true", help="re-run on the demo data to refresh the checked outputs")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a notebook needs syncing")
    args = parser.parse_args(argv)
    paths = [p.with_suffix(".ipynb") for p in args.notebooks] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    if args.check:
        found = [line for path in paths for line in problems(path)]
        print("\n".join(found) or f"{len(paths)} notebook(s) in sync and stripped", file=sys.stderr)
        return 1 if found else 0
    for path in paths:
        nb = sync_pair(path)
        if args.execute:
            nb = execute_checked_outputs(nb, path.parent)
        write_pair(path, strip(nb))
        print(f"synced {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
