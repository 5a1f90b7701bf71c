"""facecom_utils.reporting.runner: the papermill runner, on small throwaway notebooks; its plan; the kernel-start retry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from facecom_utils.common import paths
from facecom_utils.reporting import execution
from facecom_utils.reporting import plan as planning
from facecom_utils.reporting import runner as run

WRITE_METRICS = """
import json, pathlib
pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
(pathlib.Path(output_dir) / "metrics.json").write_text(json.dumps({METRICS}))
"""


def _notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def notebook_dir(tmp_path: Path) -> Path:
    """Tiny stand-ins for the four notebooks (same names, same parameter conventions)."""
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "01_eda.ipynb", "data_root = None\noutput_dir = None\nseed = 0",
              "import sys\nprint(sys.executable)",
              WRITE_METRICS.replace("{METRICS}", "{'task_a_images': 7, 'seed': seed, 'data_root': data_root}"))
    _notebook(d / "02_gender_classification.ipynb", "data_root = None\noutput_dir = None\nepochs = 1\nlr = 0.1",
              "import matplotlib.pyplot as plt\nplt.plot([0, 1]); plt.title('curve'); plt.xlabel('x'); plt.ylabel('y'); plt.show()",
              WRITE_METRICS.replace("{METRICS}", "{'balanced_accuracy': 0.75, 'epochs': epochs, 'lr': lr}"))
    _notebook(d / "03_arcface_recognition.ipynb", "data_root = None\noutput_dir = None\nepochs = 1\nfail = False",
              "assert not fail, 'asked to fail'",
              WRITE_METRICS.replace("{METRICS}", "{'top1': 0.5, 'epochs': epochs}"))
    _notebook(d / "04_threshold_analysis.ipynb", "run_dir = None\noutput_dir = None\ndata_root = None",
              "import json, pathlib\nupstream = json.loads((pathlib.Path(run_dir) / 'metrics.json').read_text())",
              WRITE_METRICS.replace("{METRICS}", "{'recommended_threshold': 0.3, 'upstream_top1': upstream['top1']}"))
    return d


def test_parse_value_types_like_papermill() -> None:
    assert run.parse_value("True") is True and run.parse_value("False") is False and run.parse_value("None") is None
    assert run.parse_value("3") == 3 and isinstance(run.parse_value("3"), int)
    assert run.parse_value("[0.85]") == [0.85] and run.parse_value("{sunny: 2.0}") == {"sunny": 2.0}
    assert run.parse_value("[not closed") == "[not closed"
    assert run.parse_value("1e-3") == 0.001 and run.parse_value("0.5") == 0.5
    assert run.parse_value("efficientnet-b0") == "efficientnet-b0" and run.parse_value("true") == "true"


def test_presets_merge_in_order(tmp_path: Path) -> None:
    a = tmp_path / "a.yml"
    b = tmp_path / "b.yml"
    a.write_text("epochs: 3\nlr: 0.1\n'02':\n  image_size: 64\n")
    b.write_text("epochs: 5\n'02':\n  batch_size: 8\n")
    assert run.load_presets([a, b]) == {"epochs": 5, "lr": 0.1, "02": {"image_size": 64, "batch_size": 8}}
    (tmp_path / "bad.yml").write_text("- a\n- b\n")
    with pytest.raises(run.RunError, match="bad.yml"):
        run.load_presets([tmp_path / "bad.yml"])
    with pytest.raises(run.RunError, match="missing.yml"):
        run.load_presets([tmp_path / "missing.yml"])


def test_resolve_notebooks() -> None:
    assert run.resolve_notebooks(None) == list(run.NOTEBOOKS.values())
    assert run.resolve_notebooks("02,1") == ["01_eda", "02_gender_classification"]
    assert run.resolve_notebooks(["04_threshold_analysis"]) == ["04_threshold_analysis"]
    with pytest.raises(run.RunError, match="unknown notebook"):
        run.resolve_notebooks("05")


def test_kernel_is_this_interpreter() -> None:
    assert run.kernel_command()[0] == sys.executable


def test_committed_notebooks_declare_their_parameters() -> None:
    for stem in run.NOTEBOOKS.values():
        path = run.NOTEBOOK_DIR / f"{stem}.ipynb"
        if path.is_file():
            params = run.notebook_parameters(path)
            assert "output_dir" in params and ("data_root" in params or "run_dir" in params)


def test_run_success_writes_reports_index_and_summary(notebook_dir: Path, demo_root: Path, tmp_path: Path) -> None:
    result = run.run_reports(
        parameters={"epochs": 2, "seed": 5, "02": {"lr": 0.01}},
        name="ok",
        data_root=demo_root,
        reports_dir=tmp_path / "reports",
        notebook_dir=notebook_dir,
        quiet=True,
    )
    assert result.ok, [r.error for r in result.notebooks]
    run_dir = tmp_path / "reports" / "ok"
    for stem in run.NOTEBOOKS.values():
        for suffix in (".ipynb", ".html", ".nocode.html"):
            assert (run_dir / f"{stem}{suffix}").is_file()
    metrics = {r.name: r.metrics for r in result.notebooks}
    assert metrics["01_eda"]["seed"] == 5 and metrics["01_eda"]["data_root"] == str(demo_root.resolve())
    assert metrics["02_gender_classification"] == {"balanced_accuracy": 0.75, "epochs": 2, "lr": 0.01}
    assert metrics["03_arcface_recognition"]["epochs"] == 2
    assert metrics["04_threshold_analysis"]["upstream_top1"] == 0.5  # run_dir = 03's output folder
    executed = nbformat.read(run_dir / "01_eda.ipynb", as_version=4)
    assert executed.cells[3].outputs[0].text.strip() == sys.executable  # the kernel is this interpreter
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ok"] and summary["synthetic"] is True
    assert summary["headline"]["02_gender_classification"]["balanced_accuracy"] == 0.75
    index = (run_dir / "index.html").read_text()
    assert "SYNTHETIC" in index.upper() and 'href="02_gender_classification.nocode.html"' in index
    assert "balanced_accuracy" in index
    nocode = (run_dir / "02_gender_classification.nocode.html").read_text()
    assert "plt.plot" not in nocode and "image/png" in nocode


def test_failure_names_notebook_and_cell_and_keeps_other_reports(
    notebook_dir: Path, demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run.main([
        "--name", "bad", "--data-root", str(demo_root), "--reports-dir", str(tmp_path / "reports"),
        "--notebook-dir", str(notebook_dir), "-p", "fail", "True",
    ])
    assert code == 1
    err = capsys.readouterr().err
    assert "03_arcface_recognition.ipynb: code cell 2" in err and "AssertionError: asked to fail" in err
    run_dir = tmp_path / "reports" / "bad"
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {n["name"]: n["status"] for n in summary["notebooks"]}
    assert status == {"01_eda": "ok", "02_gender_classification": "ok", "03_arcface_recognition": "failed",
                      "04_threshold_analysis": "skipped"}
    failed = next(n for n in summary["notebooks"] if n["name"] == "03_arcface_recognition")
    assert failed["failed_cell"] == 2 and "asked to fail" in failed["error"]
    for stem in ("01_eda", "02_gender_classification", "03_arcface_recognition"):
        assert (run_dir / f"{stem}.html").is_file(), stem  # the failed one is rendered too
    index = (run_dir / "index.html").read_text()
    assert "FAILED" in index and "SKIPPED" in index and "asked to fail" in index


def test_cell_timeout_fails_the_notebook_and_names_the_cell(tmp_path: Path, demo_root: Path) -> None:
    nb = _notebook(tmp_path / "slow.ipynb", "output_dir = None", "x = 1", "import time\ntime.sleep(60)")
    seconds, error, cell = run.run_notebook(nb, tmp_path / "out.ipynb", {}, cell_timeout=3)
    assert cell == 3 and seconds < 45
    assert error.startswith("slow.ipynb: code cell 3") and "timed out" in error


def test_bad_arguments_exit_2(notebook_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--reports-dir", str(tmp_path), "--notebook-dir", str(notebook_dir), "--data-root", str(tmp_path)]
    assert run.main([*common, "-p", "epoch", "3"]) == 2
    assert "unknown parameter(s) epoch" in capsys.readouterr().err
    assert run.main([*common, "--notebooks", "07"]) == 2
    assert run.main(["--reports-dir", str(tmp_path), "--notebook-dir", str(notebook_dir), "--data-root", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_presets_for_plain_papermill_work_with_the_runner(notebook_dir: Path, demo_root: Path, tmp_path: Path) -> None:
    """A preset carrying output_dir and data_root (for papermill -f) is accepted: data_root is used,
    output_dir is replaced by the run's folder."""
    preset = tmp_path / "preset.yml"
    preset.write_text(f"'02':\n  data_root: {demo_root}\n  output_dir: somewhere/else\n  epochs: 4\n")
    code = run.main(["--name", "p", "--reports-dir", str(tmp_path / "r"), "--notebook-dir", str(notebook_dir),
                     "--notebooks", "02", "-f", str(preset), "--no-html"])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "p" / "summary.json").read_text())
    assert summary["data_root"] == str(demo_root.resolve())
    params = summary["notebooks"][0]["parameters"]
    assert params["epochs"] == 4 and params["output_dir"] == str(tmp_path / "r" / "p" / "02_gender_classification")
    assert not (tmp_path / "somewhere").exists()


@pytest.mark.parametrize("preset", sorted(paths.PARAMS_DIR.glob("*/*.yml")), ids=lambda p: p.name)
def test_committed_presets_fit_the_committed_notebooks(preset: Path) -> None:
    """A preset in params/<notebook>/ applies to that notebook only, and every key is one of its parameters."""
    declared = {stem: run.notebook_parameters(run.NOTEBOOK_DIR / f"{stem}.ipynb") for stem in run.NOTEBOOKS.values()}
    parameters = run.load_presets([preset])
    assert list(parameters) == [preset.parent.name]
    for scope in [parameters, *(v for v in parameters.values() if isinstance(v, dict))]:
        scope.pop("data_root", None)
        scope.pop("output_dir", None)
    routed = planning._route_parameters(parameters, declared)
    assert [stem for stem, values in routed.items() if values] == [preset.parent.name]


def test_named_presets_and_overrides_that_win() -> None:
    """--preset facecom_cpu picks params/<stem>/facecom_cpu.yml per chosen notebook; -p beats the preset."""
    parameters = run.gather_parameters(["facecom_cpu"], [], [("epochs", "1"), ("samples_per_epoch", "256")], "03,04")
    section = parameters["03_arcface_recognition"]
    assert section["epochs"] == 1 and section["samples_per_epoch"] == 256 and section["image_size"] == 112
    assert "02_gender_classification" not in parameters  # notebook 02 was not chosen
    both = run.gather_parameters(["facecom_cpu"], [], [], None)
    assert both["02_gender_classification"]["image_size"] == 128 and both["03_arcface_recognition"]["epochs"] == 6
    with pytest.raises(run.RunError, match="no preset 'facecom_tpu'.*facecom_cpu"):
        run.gather_parameters(["facecom_tpu"], [], [], None)
    with pytest.raises(run.RunError, match="no preset 'facecom_cpu' for notebooks 01_eda"):
        run.gather_parameters(["facecom_cpu"], [], [], "01")


def test_a_kernel_that_dies_starting_is_started_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only a start failure (no cell ran) is retried, at most KERNEL_START_ATTEMPTS times; never a failing cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    calls: list[int] = []

    def dies_then_runs(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(pm, "execute_notebook", dies_then_runs)
    _, error, _ = run.run_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {})
    assert error is None and len(calls) == 2

    calls.clear()

    def always_dies(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(pm, "execute_notebook", always_dies)
    _, error, _ = run.run_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {})
    assert len(calls) == run.KERNEL_START_ATTEMPTS and "before any cell ran" in error and "kernel_info" in error

    calls.clear()

    def cell_fails(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise PapermillExecutionError(2, 3, "x = 1/0", "ZeroDivisionError", "division by zero", [])

    monkeypatch.setattr(pm, "execute_notebook", cell_fails)
    _, error, _ = run.run_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {})
    assert len(calls) == 1 and "ZeroDivisionError" in error
    assert run.is_kernel_start_failure("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')")
    assert not run.is_kernel_start_failure("ValueError: bad parameter")


# --------------------------------------------------------------------------------------------------
# The one kernel-start retry
# --------------------------------------------------------------------------------------------------


def test_start_with_retries_retries_start_failures_only() -> None:
    """Start failures are tried again up to the limit, with a line each; any other failure is raised at once."""
    told: list[str] = []
    results = iter([RuntimeError("Kernel died before replying to kernel_info"), "started"])

    def start(attempt: int) -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return f"{result} at {attempt}"

    value, failures = execution.start_with_retries(start, 3, notify=told.append)
    assert value == "started at 2" and len(failures) == 1 and "attempt 1 of 3 failed" in failures[0]
    assert len(told) == 1 and "starting a new one" in told[0] and "kernel_info" in told[0]

    attempts: list[int] = []

    def never(attempt: int) -> None:
        attempts.append(attempt)
        raise RuntimeError(f"dead {attempt}")

    with pytest.raises(execution.KernelStartError) as info:
        execution.start_with_retries(never, 3, notify=told.append)
    assert attempts == [1, 2, 3] and len(info.value.failures) == 3
    assert "failed to start 3 times" in str(info.value) and str(info.value.__cause__) == "dead 3"

    attempts.clear()
    with pytest.raises(RuntimeError, match="dead 1"):  # not a start failure: never retried
        execution.start_with_retries(never, 3, retryable=lambda error: False)
    assert attempts == [1]


def test_run_notebook_uses_the_shared_retry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import papermill as pm

    calls: list[int] = []
    shared = execution.start_with_retries

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args[1])
        return shared(*args, **kwargs)

    monkeypatch.setattr(execution, "start_with_retries", spy)
    monkeypatch.setattr(pm, "execute_notebook", lambda *args, **kwargs: None)
    _, error, _ = run.run_notebook(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {})
    assert error is None and calls == [run.KERNEL_START_ATTEMPTS]


# --------------------------------------------------------------------------------------------------
# Never silent: sections and progress lines reach the terminal
# --------------------------------------------------------------------------------------------------


def test_the_terminal_sees_each_section_and_the_progress_lines(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("output_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A notebook"), params,
        nbformat.v4.new_markdown_cell("## 1. Counting\nSome text."),
        nbformat.v4.new_code_cell("from facecom_utils.common.progress import ProgressLog\n"
                                  "log = ProgressLog(4, 'things', every_s=0)\nfor _ in range(4):\n    log.update()\nlog.close()"),
        nbformat.v4.new_code_cell("print('not a progress line')"),
        nbformat.v4.new_markdown_cell("## 2. Done"),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    nbformat.write(nb, tmp_path / "counting.ipynb")
    lines: list[str] = []
    _, error, _ = run.run_notebook(tmp_path / "counting.ipynb", tmp_path / "out.ipynb", {"output_dir": str(tmp_path)},
                                   say=lines.append)
    assert error is None, error
    sections = [line for line in lines if "(code cell" in line]
    assert [line.split(" (")[0] for line in sections] == ["[counting] setup", "[counting] 1. Counting", "[counting] 2. Done"]
    assert "code cell 3 of 5" in sections[1]  # the injected parameters cell counts: papermill runs it
    assert "[counting] things: 2/4 (50%)" in "\n".join(lines) and "[counting] things: done, 4 in" in "\n".join(lines)
    assert not any("not a progress line" in line for line in lines)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)  # the report keeps the lines too
    assert "[progress] things: 4/4 (100%)" in "".join(o.get("text", "") for o in executed.cells[4].outputs)


# --------------------------------------------------------------------------------------------------
# FACECOM in, headline out: the plan
# --------------------------------------------------------------------------------------------------


def _facecom_tree(root: Path) -> Path:
    """A tiny tree in FACECOM's layout (one image per folder), standing in for a clone with FACECOM placed."""
    from PIL import Image

    for rel in ("Task_A/train/female/a_0001.jpg", "Task_A/train/male/b_0001.jpg",
                "Task_B/train/Some_One/Some_One_0001.jpg", "Task_B/train/Some_One/distortion/Some_One_0001_foggy.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / rel)
    return root


@pytest.fixture()
def clone_with_facecom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository-root detection points at a folder whose Task_A/, Task_B/ hold FACECOM; no GPU."""
    clone = _facecom_tree(tmp_path / "clone")
    monkeypatch.setattr(paths, "REPO_ROOT", clone)
    monkeypatch.delenv(paths.DATA_ROOT_ENV, raising=False)
    monkeypatch.setattr(planning, "device_summary", lambda: ("cpu", "cpu: 2 cores, no CUDA GPU"))
    return clone


def test_plan_on_facecom_in_the_clone_uses_the_cpu_preset(clone_with_facecom: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`facecom run --plan` in a clone with FACECOM in Task_A/, Task_B/: facecom_cpu, 02 at 128 px; nothing runs."""
    from facecom_utils.cli.commands import main as facecom

    assert facecom(["run", "--plan", "--name", "p", "--reports-dir", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert f"data:    {clone_with_facecom} (FACECOM, from the repository's Task_A/, Task_B/)" in out
    assert "presets: facecom_cpu, chosen for FACECOM on this machine (no CUDA GPU)" in out
    for stem in ("02_gender_classification", "03_arcface_recognition"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {stem}"))
        assert f"{stem}/facecom_cpu.yml" in line and "expected about" in line and "min" in line
    section_02 = out.split("02_gender_classification:")[1].split("03_arcface_recognition:")[0]
    assert "image_size: 128   (default 64)" in section_02
    assert f"data_root: '{clone_with_facecom}'" in section_02
    assert "01_eda" in out and "notebook defaults; time: not estimated" in out
    assert not (tmp_path / "reports").exists()  # the plan runs nothing


def test_plan_respects_named_presets_overrides_and_the_gpu(clone_with_facecom: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plan = planning.plan_run("02", overrides=[("epochs", "1")])
    assert plan.auto_preset == "facecom_cpu" and plan.parameters["02_gender_classification"]["epochs"] == 1
    assert plan.parameters["02_gender_classification"]["image_size"] == 128  # -p on top of the preset
    assert "(before the -p overrides)" in plan.banner()
    own = planning.plan_run("02", presets=["defaults"])  # the demo-sized defaults, by name only
    assert own.auto_preset is None and own.preset_files == [] and "image_size" not in own.parameters["02_gender_classification"]
    monkeypatch.setattr(planning, "device_summary", lambda: ("cuda", "cuda: a GPU (1 GPU)"))
    gpu = planning.plan_run("02,03")
    assert gpu.auto_preset == "facecom_gpu" and gpu.parameters["02_gender_classification"]["image_size"] == 224
    assert [p.name for p in gpu.preset_files] == ["facecom_gpu.yml", "facecom_gpu.yml"]
    assert all(gpu.expected[stem] for stem in gpu.notebooks)


def test_plan_on_the_demo_keeps_the_notebook_defaults(demo_root: Path, clone_with_facecom: Path) -> None:
    """The demo (even with FACECOM in the clone) gets no preset; a FACECOM root given by --data-root gets one."""
    demo = planning.plan_run(data_root=demo_root)
    assert demo.synthetic and not demo.facecom and demo.auto_preset is None and demo.preset_files == []
    assert "SYNTHETIC" in demo.banner() and "none: the notebooks' own defaults" in demo.banner()
    elsewhere = _facecom_tree(clone_with_facecom.parent / "FACECOM")
    given = planning.plan_run("03", data_root=elsewhere)
    assert given.facecom and given.auto_preset == "facecom_cpu" and given.data_source == "--data-root"


def test_expected_minutes_is_read_from_the_preset_comment(tmp_path: Path) -> None:
    preset = tmp_path / "p.yml"
    preset.write_text("# for the tests\n# expected_minutes: 12.5  (on 2 cores)\nepochs: 3\n")
    assert planning.expected_minutes(preset) == 12.5
    preset.write_text("epochs: 3  # expected_minutes: 4 is not a comment line\n")
    assert planning.expected_minutes(preset) is None
