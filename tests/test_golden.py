"""Golden metrics: a tiny fixed run of each task reproduces the recorded numbers (abs 1e-4).

Guards refactors of the training pipelines: any change to what a run computes (data order,
sampling, augmentation, initialisation, schedule, evaluation, thresholds) moves these numbers.
A change that is *meant* to move them is recorded by regenerating the golden file:

    FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py

(then review ``git diff tests/golden/`` and commit it with the change that moved it).

Everything is fixed: a tiny synthetic demo (its bytes are checked by a SHA-256, so a change in
the demo drawing, in Pillow's JPEG encoder or in NumPy's generator shows up as a *data* change,
not as a model change), seeds, epochs, ``pretrained=None``, the CPU, one torch thread. CPU runs
with one thread are deterministic on one machine, but CPUs with other vector units (AVX-512 and
AMX against AVX2, say) pick other float kernels: the last bits of the first step differ, and two
training epochs on 20 identities turn that into differences of a few hundredths. So a section may
hold **variants**, one per kind of CPU, each recorded on such a machine; a run passes when it
matches one of them to 1e-4 (a refactor that changes what is computed matches none):

    FACECOM_UPDATE_GOLDEN=add pytest tests/test_golden.py   # add this CPU's variant, keep the others

``FACECOM_UPDATE_GOLDEN=1`` replaces the main section and drops the variants (a change meant to move
the numbers is then re-recorded on the other kinds of CPU with ``add``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facecom_utils.data.demo import make_demo_dataset
from facecom_utils.gender.pipeline import GenderConfig, train_gender
from facecom_utils.recognition import RecognitionConfig, train_recognition

GOLDEN_PATH = Path(__file__).parent / "golden" / "tiny_demo_metrics.json"
UPDATE_MODE = os.environ.get("FACECOM_UPDATE_GOLDEN", "")
UPDATE = UPDATE_MODE not in ("", "0", "add")
ADD_VARIANT = UPDATE_MODE == "add"
TOLERANCE = 1e-4

DEMO = dict(seed=0, train_identities=10, val_identities=6, clean_per_identity=2, image_size=64)
GENDER = dict(image_size=32, epochs=2, batch_size=8, eval_batch_size=16, val_fraction=0.3, pretrained=None,
              patience=None, evaluate_distortions=True, seed=0, device="cpu", progress=False)
RECOGNITION = dict(image_size=32, epochs=2, batch_size=8, samples_per_epoch=32, embedding_dim=32, val_fraction=0.2,
                   pretrained=None, patience=None, flip_tta=False, seed=0, device="cpu", progress=False)

GENDER_KEYS = (
    "accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female", "recall_male",
    "mcc", "roc_auc", "average_precision", "brier", "ece", "threshold", "balanced_accuracy_at_0.5",
    "recall_female_at_0.5", "per_distortion/blurred", "per_distortion/sunny", "val_fold/balanced_accuracy",
    "val_fold/roc_auc", "best_epoch", "n_report_images", "n_val_fold_images",
)
RECOGNITION_KEYS = (
    "top1", "top5", "strict_top1", "roc_auc", "eer", "strict_roc_auc", "strict_eer", "tar_at_far_1e-2",
    "threshold", "strict_threshold", "match_accuracy", "match_f1_macro", "strict_match_accuracy",
    "oracle_threshold", "per_distortion/blurred", "per_distortion/sunny", "fold_top1", "fold_strict_top1",
    "best_epoch", "n_probes", "n_impostor",
)


# ----------------------------------------------------------------------------- helpers


def tree_sha256(root: Path) -> str:
    """SHA-256 over the sorted relative paths (POSIX) and bytes of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _lookup(metrics: dict[str, Any], key: str) -> Any:
    """``metrics[key]``; ``a/b`` reads ``metrics[a][b]`` (keys themselves hold dots: ``..._at_0.5``)."""
    value: Any = metrics
    for part in key.split("/"):
        value = value[part]
    return value


def _plain(value: Any) -> float | int | None:
    """JSON value of a metric: None for NaN (strict JSON has no NaN)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a golden metric should be a number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def _section(metrics: dict[str, Any], keys: tuple[str, ...], history: Any) -> dict[str, Any]:
    out = {key: _plain(_lookup(metrics, key)) for key in keys}
    out["history/train_loss"] = [float(v) for v in history["train_loss"]]
    return out


def _load_golden() -> dict[str, Any]:
    return json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.is_file() else {}


def cpu_kind() -> str:
    """A label for the CPU's vector units (what picks torch's float kernels), e.g. ``x86_64 avx2 avx512f amx``."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    units = [f for f in ("avx2", "avx512f", "amx_tile") if f in flags]
    return " ".join([platform.machine(), *(u.replace("_tile", "") for u in units)])


def _mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, (dict, str)) or want is None or got is None:
            if got != want:
                out.append((key, want, got))
        elif isinstance(want, list):
            if len(got) != len(want) or not np.allclose(got, want, rtol=0, atol=TOLERANCE):
                out.append((key, want, got))
        elif not abs(got - want) <= TOLERANCE:
            out.append((key, want, got))
    return out


def _add_variant(name: str, section: dict[str, Any]) -> None:
    golden = _load_golden()
    if name not in golden:
        return _update_golden(name, section)
    variants = golden.setdefault("_variants", {}).setdefault(name, [])
    candidates = [golden[name], *[{k: v for k, v in var.items() if not k.startswith("_")} for var in variants]]
    if not any(set(c) == set(section) and not _mismatches(c, section) for c in candidates):
        variants.append({"_cpu": cpu_kind(), "_torch": torch.__version__, **section})
        GOLDEN_PATH.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


def _update_golden(name: str, section: dict[str, Any]) -> None:
    golden = _load_golden()
    golden.get("_variants", {}).pop(name, None)
    golden["_about"] = ("Golden metrics of tests/test_golden.py; regenerate with "
                        "FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py and review the diff.")
    golden["_made_with"] = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "tolerance_abs": TOLERANCE}
    golden[name] = section
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


def _expected(name: str) -> dict[str, Any]:
    golden = _load_golden()
    if name not in golden:
        pytest.fail(f"{GOLDEN_PATH} has no {name!r} section; run FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py")
    return golden[name]


def _compare(name: str, actual: dict[str, Any]) -> None:
    """Every recorded value matches to TOLERANCE (NaN only where NaN was recorded); same keys and settings."""
    if UPDATE:
        _update_golden(name, actual)
    elif ADD_VARIANT:
        _add_variant(name, actual)
    expected = _expected(name)
    assert set(actual) == set(expected), f"{name}: keys differ from the golden file; regenerate it"
    mismatches = _mismatches(expected, actual)
    variants = _load_golden().get("_variants", {}).get(name, [])
    matched = [v["_cpu"] for v in variants if not _mismatches({k: w for k, w in v.items() if not k.startswith("_")}, actual)]
    assert not mismatches or matched, (
        f"{name}: (key, golden, now) beyond abs {TOLERANCE}: {mismatches}; no variant matches either "
        f"(recorded for: {[v['_cpu'] for v in variants]}; this CPU: {cpu_kind()})")


# ----------------------------------------------------------------------------- fixtures (one run per task)


@pytest.fixture(scope="module")
def golden_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("golden") / "demo_synthetic", **DEMO)


@pytest.fixture(scope="module")
def module_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gender_run(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory, module_one_thread: None) -> Any:
    out = tmp_path_factory.mktemp("golden_gender")
    return train_gender(GenderConfig(data_root=str(golden_demo), output_dir=str(out), **GENDER))


@pytest.fixture(scope="module")
def recognition_run(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory, module_one_thread: None) -> Any:
    out = tmp_path_factory.mktemp("golden_recognition")
    return train_recognition(RecognitionConfig(data_root=str(golden_demo), output_dir=str(out), **RECOGNITION))


# ----------------------------------------------------------------------------- tests


def test_golden_demo_data_is_byte_identical(golden_demo: Path) -> None:
    n_files = sum(1 for p in golden_demo.rglob("*") if p.is_file())
    _compare("demo", {"params": DEMO, "n_files": n_files, "sha256": tree_sha256(golden_demo)})


def test_golden_gender_metrics(gender_run: Any) -> None:
    actual = _section(gender_run.metrics, GENDER_KEYS, gender_run.history)
    actual["config"] = {k: v for k, v in GENDER.items()}
    _compare("gender", actual)


def test_golden_recognition_metrics(recognition_run: Any) -> None:
    actual = _section(recognition_run.metrics, RECOGNITION_KEYS, recognition_run.history)
    actual["config"] = {k: v for k, v in RECOGNITION.items()}
    _compare("recognition", actual)
