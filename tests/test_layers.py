"""The package's imports run one way: data -> models -> training -> evaluation -> tasks -> reporting.

Read from the source (every ``import`` and ``from ... import``, those inside functions included), so a
lazy import cannot hide a dependency on a higher layer. A module assigned to no layer fails the test:
a new module takes its place in ``LAYERS`` (and in the README's table) when it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "facecom_utils"
LAYERS: dict[str, tuple[str, ...]] = {
    "data": ("data", "distortions", "restoration", "demo", "datasets", "cache", "distributed", "face", "splits",
             "feature_cache", "quality"),
    "models": ("models", "heads", "dlib_resnet", "face_model"),
    "training": ("checkpoints", "training", "config", "rundir"),
    "evaluation": ("evaluation", "scoring", "verification"),
    "tasks": ("gender", "gender_face", "glare", "recognition"),
    "reporting": ("plots", "eda", "thresholds", "notebook", "run", "report_index", "cli", "bench", "launch", "nbval_kernel",
                  "__init__", "__main__"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)


def _top_module(path: Path) -> str:
    """The package module a file belongs to: ``recognition`` for ``recognition/pipeline.py``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def package_imports(path: Path) -> list[tuple[str, int]]:
    """``(imported facecom_utils module, line)`` for every import in a module's source (submodules of a
    subpackage count as the subpackage; imports between them are within one module)."""
    here = ("facecom_utils", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]) if path.is_relative_to(
        PACKAGE) else ("facecom_utils",)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                full = [*base, *(node.module.split(".") if node.module else [])]
                names = [full[1]] if len(full) > 1 else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "facecom_utils":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                names = []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("facecom_utils.")]
        else:
            continue
        found += [(name, node.lineno) for name in names]
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer() -> None:
    modules = {_top_module(p) for p in _sources()}
    assert modules - set(RANK) == set(), "assign these modules to a layer in LAYERS (and the README)"
    assert set(RANK) - modules == set(), "LAYERS names modules that no longer exist"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_never_reach_a_higher_layer(path: Path) -> None:
    me = RANK[_top_module(path)]
    for name, line in package_imports(path):
        assert name in RANK, f"{path.name}:{line} imports {name}, which is in no layer"
        assert RANK[name] <= me, (f"{path.relative_to(PACKAGE)}:{line} ({NAMES[me]}) imports {name} "
                                  f"({NAMES[RANK[name]]}), a higher layer")


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "data.py"
    module.write_text("def f():\n    from facecom_utils.gender import train_gender\n    from .run import main\n")
    assert package_imports(module) == [("gender", 2), ("run", 3)]
    inner = PACKAGE / "recognition" / "pipeline.py"  # ..data is the package's data; .config its own submodule
    found = dict(package_imports(inner))
    assert "data" in found and "recognition" in found
