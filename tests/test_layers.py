"""The package's folders are its layers, and imports run one way through them.

``common -> data -> face -> nn -> train -> metrics -> {gender, recognition} -> reporting -> {cli, bench}``
(docs/architecture.md). Read from the source (every ``import`` and ``from ... import``, those inside
functions included), so a lazy import cannot hide a dependency on a later folder. Two folders of the
same rank (``gender`` and ``recognition``; ``cli`` and ``bench``) never import each other. Every module
sits in a concept folder: the top level holds ``__init__`` and ``__main__`` only. The modules of one
folder import each other without a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "facecom_utils"
ORDER: tuple[tuple[str, ...], ...] = (
    ("common",), ("data",), ("face",), ("nn",), ("train",), ("metrics",), ("gender", "recognition"),
    ("reporting",), ("cli", "bench"),
)
RANK = {folder: rank for rank, folders in enumerate(ORDER) for folder in folders}
TOP_LEVEL = {"__init__", "__main__"}
MAX_MODULE_LINES = 800


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    """``facecom_utils.data.layout`` for ``facecom_utils/data/layout.py`` (a folder's ``__init__`` is the folder)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> list[tuple[str, int]]:
    """``(imported facecom_utils module, line)`` for every import in a file, those inside functions too.

    ``from facecom_utils.data import layout`` counts as ``facecom_utils.data.layout``; a relative import is
    resolved against the file's own package."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] != "facecom_utils":
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or (
                    PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                found.append((candidate if is_module else module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "facecom_utils"]
    return found


def folder_of(module: str) -> str | None:
    """The concept folder of a dotted module (``data`` for ``facecom_utils.data.layout``); None for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_ranked_folder() -> None:
    for path in _sources():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            assert rel.stem in TOP_LEVEL, f"{rel}: the top level holds only __init__ and __main__; move it into a folder"
        else:
            assert rel.parts[0] in RANK, f"{rel}: folder {rel.parts[0]!r} has no rank in ORDER (and docs/architecture.md)"
    assert set(RANK) == {p.parent.name for p in _sources() if p.parent != PACKAGE}, "ORDER names a folder that is gone"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_reach_a_later_folder(path: Path) -> None:
    if path.parent == PACKAGE:  # __init__ / __main__ at the top: the entry points may import anything
        return
    me = folder_of(module_name(path))
    for module, line in package_imports(path):
        other = folder_of(module)
        assert other is not None and other in RANK, f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        if other == me:
            continue
        assert RANK[other] < RANK[me], (f"{path.relative_to(PACKAGE)}:{line} ({me}) imports {module} ({other}), "
                                        f"{'a later folder' if RANK[other] > RANK[me] else 'a sibling of the same rank'}")


def test_no_import_cycle_between_modules() -> None:
    """The module graph (lazy imports included) has no cycle, inside a folder or across."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        me = module_name(path)
        graph[me] = {m for m, _ in package_imports(path) if m != me and m != "facecom_utils"}
    # a folder's __init__ re-exporting its own modules is not a cycle through them
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            elif state.get(nxt) is None and nxt in graph:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_under_800_lines(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {n} lines; split it by concept"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    inner = PACKAGE / "recognition" / "pipeline.py"
    found = {m for m, _ in package_imports(inner)}
    assert "facecom_utils.data.layout" in found and "facecom_utils.recognition.config" in found
    fake = PACKAGE / "data" / "layout.py"
    assert folder_of(module_name(fake)) == "data"
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from facecom_utils.gender import pipeline\n    import facecom_utils.cli.commands\n")
    tree_found = []
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            tree_found.append(node.lineno)
    assert tree_found == [2, 3]


MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = {("train/fit.py", "fit")}  # the one training loop, read top to bottom on purpose


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_stay_under_80_lines(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED]
    assert long == [], f"{rel}: split into named stages: {long}"
