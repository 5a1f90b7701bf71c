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
    "data": ("data", "distortions", "restoration", "demo", "datasets", "cache", "distributed", "face"),
    "models": ("models", "heads"),
    "training": ("training", "config", "rundir"),
    "evaluation": ("evaluation", "verification"),
    "tasks": ("gender", "recognition"),
    "reporting": ("plots", "eda", "thresholds", "notebook", "run", "cli", "bench", "launch", "nbval_kernel",
                  "__init__", "__main__"),
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
NAMES = list(LAYERS)


def package_imports(path: Path) -> list[tuple[str, int]]:
    """``(imported facecom_utils module, line)`` for every import in a module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "facecom_utils":
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


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules - set(RANK) == set(), "assign these modules to a layer in LAYERS (and the README)"
    assert set(RANK) - modules == set(), "LAYERS names modules that no longer exist"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_imports_never_reach_a_higher_layer(path: Path) -> None:
    me = RANK[path.stem]
    for name, line in package_imports(path):
        assert name in RANK, f"{path.name}:{line} imports {name}, which is in no layer"
        assert RANK[name] <= me, (f"{path.name}:{line} ({NAMES[me]}) imports {name} ({NAMES[RANK[name]]}), "
                                  "a higher layer")


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "data.py"
    module.write_text("def f():\n    from facecom_utils.gender import train_gender\n    from .run import main\n")
    assert package_imports(module) == [("gender", 2), ("run", 3)]
