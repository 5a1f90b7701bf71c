"""Golden numbers: what a tiny fixed run computes, pinned where it is the same on every CPU.

Guards refactors of the two training pipelines (data, splits, sampling, initialisation, protocol,
metrics): a change to what they compute moves one of the pinned numbers. Everything below is
fixed (a tiny synthetic demo, seeds, ``pretrained=None``, the CPU, one torch thread) and, unlike a
trained model's metrics, reproducible on any CPU. PyTorch picks other float kernels on other
vector units (AVX-512/AMX, AVX2, none): the last bits of a forward pass differ, and two training
epochs on 20 identities turn that into differences of a few hundredths, so nothing downstream of a
training step is pinned here. Pinned:

- ``demo``: the synthetic demo's bytes (SHA-256 of the tree). A change in the demo drawing, in
  Pillow's JPEG encoder or in NumPy's generator shows up as a *data* change, not a model change.
- ``*_pipeline``: each task's training data as the real stages build it (``gender_splits`` ->
  ``gender_pipeline``; ``recognition_splits`` -> ``recognition_pipeline``) and as ``train.fit.fit``
  draws it (seeded, sampler at epoch 0): split sizes, the ordered image paths of each part, the
  sampler's epoch-0 order, and the labels and SHA-256 of the decoded uint8 images of the first
  batches (before the float augmentation on the device). Decoding, resizing and the pre-rendered
  distortions round to uint8: identical under every torch capability and NumPy / OpenBLAS kernel
  set tried (AVX-512, AVX2, baseline).
- ``*_metrics``: the protocol's numbers on fixed inputs: seeded float64 NumPy probabilities (Task A:
  ``choose_threshold`` on the fold, ``binary_metrics``, ECE, per distortion) and seeded embeddings
  (Task B: ``choose_thresholds`` on the fold, ``protocol_metrics`` on the reported split) laid on the
  demo's own tables. No torch kernel runs; the embeddings are quantised so that every dot product
  is exact in float32 whatever the BLAS kernel's summation order (see ``_embeddings``).
- ``*_forward``: the seeded initial model's loss on the first training batches and its outputs on
  the first one (one forward pass each, train mode, no optimizer step), through each pipeline's own
  ``loss_fn``. Float kernels differ here, so these hold to ``FORWARD_RTOL`` of their scale (see
  there), not 1e-4.
- ``*_run``: the end-to-end tiny run (two epochs) pinned by its counts and settings only
  (``n_report_images``, ``n_probes``, ``n_impostor``...); its metrics are checked to be finite and,
  for Task B, to be what ``protocol_metrics`` gives on the run's own saved embeddings. Whether
  training *learns* is ``tests/test_learning.py``'s job (margins, not exact numbers).

Everything else is compared to ``TOLERANCE`` (abs 1e-4; integers, strings and hashes exactly). A
change that is *meant* to move these numbers is recorded by regenerating the golden file:

    FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py

(then review ``git diff tests/golden/`` and commit it with the change that moved it). One file holds
for every CPU: there are no per-machine variants.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from facecom_utils.data.demo import make_demo_dataset
from facecom_utils.data.distortions import DISTORTION_TYPES
from facecom_utils.data.layout import scan_task_a
from facecom_utils.gender import pipeline as gender_mod
from facecom_utils.metrics.classification import binary_metrics, choose_threshold, expected_calibration_error
from facecom_utils.recognition import RecognitionConfig, train_recognition
from facecom_utils.recognition import pipeline as rec_mod
from facecom_utils.recognition.embedding import load_embeddings
from facecom_utils.recognition.model import build_recognition_model
from facecom_utils.recognition.protocol import choose_thresholds, protocol_metrics
from facecom_utils.train.fit import seed_everything

GOLDEN_PATH = Path(__file__).parent / "golden" / "tiny_demo_metrics.json"
UPDATE = os.environ.get("FACECOM_UPDATE_GOLDEN", "") not in ("", "0")
TOLERANCE = 1e-4
# The forward pass is the one pinned computation that runs torch's float kernels, which differ per
# CPU. Measured (float32, one thread) against this machine's AVX-512 run: ATEN_CPU_CAPABILITY=avx2
# agrees bit for bit; =default (also with ONEDNN_MAX_CPU_ISA=SSE41 and MKL_ENABLE_INSTRUCTIONS=SSE4_2)
# moves the losses by <= 3.1e-5 relative and the outputs by <= 1.6e-4 of their scale (the largest
# |value| of the pinned array: Task B's margin logits reach ~21 and moved by 3.4e-3). Each value
# holds to FORWARD_RTOL times that scale (at least 1): >= 12x the measured spread, while a change of
# seed, initialisation, batch, augmentation or loss moves these numbers by whole percents of it.
FORWARD_RTOL = 2e-3
N_BATCHES = 3  # first training batches pinned per task
SECTIONS = ("demo", "gender_pipeline", "gender_forward", "gender_metrics", "gender_run", "recognition_pipeline",
            "recognition_forward", "recognition_metrics", "recognition_run")

DEMO = dict(seed=0, train_identities=10, val_identities=6, clean_per_identity=2, image_size=64)
GENDER = dict(image_size=32, epochs=2, batch_size=8, eval_batch_size=16, val_fraction=0.3, pretrained=None,
              patience=None, evaluate_distortions=True, seed=0, device="cpu", progress=False)
RECOGNITION = dict(image_size=32, epochs=2, batch_size=8, samples_per_epoch=32, embedding_dim=32, val_fraction=0.2,
                   pretrained=None, patience=None, flip_tta=False, seed=0, device="cpu", progress=False)

GENDER_METRIC_KEYS = (
    "accuracy", "balanced_accuracy", "precision_male", "recall_male", "f1_male", "precision_female",
    "recall_female", "f1_female", "f1_macro", "mcc", "roc_auc", "average_precision", "brier", "confusion_matrix",
    "threshold", "n", "n_positive",
)
GENDER_DISTORTION_KEYS = ("accuracy", "balanced_accuracy", "recall_female", "recall_male", "f1_macro", "roc_auc")
RECOGNITION_METRIC_KEYS = (
    "n_probes", "top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "n_genuine", "n_impostor",
    "match_accuracy", "match_precision", "match_recall", "match_f1", "match_f1_macro", "match_confusion_matrix",
    "n_pairs", "threshold", "oracle_threshold", "oracle_match_accuracy", "per_distortion", "n_gallery",
    "n_identities", "strict_n_probes", "strict_top1", "strict_top5", "strict_roc_auc", "strict_eer",
    "strict_tar_at_far_1e-2", "strict_n_impostor", "strict_match_accuracy", "strict_match_f1",
    "strict_match_confusion_matrix", "strict_threshold", "strict_oracle_threshold", "strict_per_distortion",
    "strict_n_excluded", "strict_top1_identity_macro",
)
RECOGNITION_DISTORTION_KEYS = ("top1", "top5", "roc_auc", "eer", "match_accuracy", "match_f1")


# ----------------------------------------------------------------------------- helpers


def tree_sha256(root: Path) -> str:
    """SHA-256 over the sorted relative paths (POSIX) and bytes of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _paths_sha256(paths: Any, root: Path) -> str:
    """SHA-256 of the ordered paths, relative to ``root`` (order matters: the sampler draws row indices)."""
    return _sha256("\n".join(Path(p).relative_to(root).as_posix() for p in paths).encode())


def _plain(value: Any) -> Any:
    """A JSON value of a result: plain numbers, None for NaN (strict JSON has no NaN), lists, dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, np.bool_)) or value is None:
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def _differences(want: Any, got: Any, close: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, golden, now)`` of every leaf that differs: floats by ``close(want, got)``, the rest exactly."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return [(key + "/<keys>", sorted(want), sorted(got))]
        return [d for k in want for d in _differences(want[k], got[k], close, f"{key}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [(key + "/<len>", len(want), len(got))]
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in _differences(w, g, close, f"{key}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if close(want, float(got)) else [(key, want, got)]
    return [] if (type(want) is type(got) and want == got) else [(key, want, got)]


def _load_golden() -> dict[str, Any]:
    return json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.is_file() else {}


def _update_golden(name: str, section: dict[str, Any]) -> None:
    golden = {k: v for k, v in _load_golden().items() if k in SECTIONS}  # sections of removed tests go
    golden["_about"] = ("Golden numbers of tests/test_golden.py (see its docstring); regenerate with "
                        "FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py and review the diff.")
    golden["_made_with"] = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "tolerance_abs": TOLERANCE,
                            "forward_rtol_of_scale": FORWARD_RTOL}
    golden[name] = section
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


def _compare(name: str, actual: dict[str, Any], forward: bool = False) -> None:
    """Every recorded value matches: floats to TOLERANCE, the rest exactly.

    ``forward``: each top-level value (a list of floats) holds to ``FORWARD_RTOL`` times its scale,
    the largest absolute golden value in it (at least 1); see ``FORWARD_RTOL``.
    """
    actual = _plain(actual)
    if UPDATE:
        _update_golden(name, actual)
    golden = _load_golden()
    if name not in golden:
        pytest.fail(f"{GOLDEN_PATH} has no {name!r} section; run FACECOM_UPDATE_GOLDEN=1 pytest tests/test_golden.py")
    expected = golden[name]
    diffs = [] if set(expected) == set(actual) else [("<keys>", sorted(expected), sorted(actual))]
    for key in sorted(set(expected) & set(actual)):
        tol = TOLERANCE
        if forward:
            tol = FORWARD_RTOL * max(1.0, float(np.max(np.abs(np.asarray(expected[key], dtype=float)))))
        diffs += _differences(expected[key], actual[key], lambda w, g, tol=tol: abs(g - w) <= tol, f"/{key}")
    assert not diffs, f"{name}: (key, golden, now) differ: {diffs[:12]}{' ...' if len(diffs) > 12 else ''}"


# ----------------------------------------------------------------------------- the first training steps


def _first_steps_fit(n_batches: int) -> Any:
    """A stand-in for ``train.fit.fit`` that does what it does up to its first optimizer step, for
    ``n_batches`` batches, and never steps.

    As ``fit`` does for epoch 0: seeds everything with ``config.seed``, puts the sampler at epoch 0,
    the model in train mode, and calls the pipeline's own ``loss_fn`` on each batch (no gradient).
    Each batch is recorded *before* ``loss_fn`` (which augments it), and every batch goes through
    ``loss_fn``, so the random draws (augmentation, dropout, distortion variants) and hence the later
    batches are exactly those of the real first epoch.
    """

    def fit(model, train_loader, loss_fn, evaluate_fn=None, config=None, checkpoint_dir=None, extra_state=None,
            on_epoch_end=None):
        sampler = getattr(train_loader, "sampler", None)
        order = None
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(0)
            order = list(sampler)
        seed_everything(config.seed)
        model.train()
        outputs: list[torch.Tensor] = []
        hook = model.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().float().clone()))
        batches, losses = [], []
        try:
            with torch.no_grad():
                for _, (x, y) in zip(range(n_batches), train_loader):
                    batches.append({"labels": y.tolist(), "dtype": str(x.dtype), "shape": list(x.shape),
                                    "sha256": _sha256(x.contiguous().numpy().tobytes())})
                    losses.append(float(loss_fn(model, (x, y))))
        finally:
            hook.remove()
        return SimpleNamespace(order=order, batches=batches, losses=losses, first_outputs=outputs[0])

    return fit


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
def gender_first_steps(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory, module_one_thread: None) -> Any:
    """``(splits, pipeline, first steps)`` of Task A through the real stages."""
    config = gender_mod.GenderConfig(data_root=str(golden_demo), output_dir=str(tmp_path_factory.mktemp("g_steps")),
                                     **GENDER)
    splits = gender_mod.gender_splits(config)
    pipeline = gender_mod.gender_pipeline(config, splits)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gender_mod, "fit", _first_steps_fit(N_BATCHES))
        steps = gender_mod.fit_gender(config, pipeline).result
    return splits, pipeline, steps


@pytest.fixture(scope="module")
def recognition_first_steps(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory,
                            module_one_thread: None) -> Any:
    """``(splits, first steps)`` of Task B through the real stages, in ``train_recognition``'s order."""
    config = RecognitionConfig(data_root=str(golden_demo), output_dir=str(tmp_path_factory.mktemp("r_steps")),
                               **RECOGNITION)
    device = config.start_run()
    splits = rec_mod.recognition_splits(config)
    model = build_recognition_model(config, len(splits.train_identities))
    pipeline = rec_mod.recognition_pipeline(config, splits, device)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rec_mod, "fit", _first_steps_fit(N_BATCHES))
        steps = rec_mod.fit_recognition(config, splits, pipeline, model, device)
    return splits, steps


# ----------------------------------------------------------------------------- fixed inputs of the protocols


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(table: pd.DataFrame, seed: int, dim: int = 32) -> np.ndarray:
    """Seeded unit embeddings of an ``embedding_table``: a gallery image is its identity's centre plus
    noise, a probe its source image's embedding plus noise that grows with the distortion's index.

    Quantised to multiples of 2**-8 (norms within 1% of 1): each product is a multiple of 2**-16,
    and every partial sum of a dot product stays below 1.02 in size (Cauchy-Schwarz), so it is an
    integer times 2**-16 of at most 17 bits: float32 (24 bits) holds every partial sum and score
    exactly, whatever the BLAS kernel's blocking and summation order (bit-identical on every CPU).
    """
    rng = np.random.default_rng(seed)
    identities = sorted(table["identity"].unique())
    centre = dict(zip(identities, _unit(rng.standard_normal((len(identities), dim)))))
    emb = np.zeros((len(table), dim))
    row_of = {path: i for i, path in enumerate(table["path"])}
    for i, row in enumerate(table.itertuples(index=False)):
        noise = _unit(rng.standard_normal(dim))
        if row.role == "gallery":
            emb[i] = _unit(centre[row.identity] + 1.2 * noise)
        else:
            base = emb[row_of[row.source]] if isinstance(row.source, str) else centre[row.identity]
            emb[i] = _unit(base + (0.9 + 0.35 * DISTORTION_TYPES.index(row.distortion)) * noise)
    return np.round(emb * 256) / 256


def _probabilities(labels: np.ndarray, persons: pd.Series, seed: int, spread: float = 1.5) -> np.ndarray:
    """Seeded P(female): logit = 0.8 * (2y - 1) + a person offset + image noise (``spread``: its scale).

    Rounded to multiples of 0.05, so that scores tie and some sit exactly at 0.5: the ``>=`` rule of
    ``binary_metrics`` and the tie rule of ``choose_threshold`` both decide pinned numbers.
    """
    rng = np.random.default_rng(seed)
    names = sorted(persons.unique())
    offset = dict(zip(names, rng.standard_normal(len(names))))
    logit = 0.8 * (2 * labels - 1) + persons.map(offset).to_numpy() + spread * rng.standard_normal(len(labels))
    return np.round(20 / (1 + np.exp(-logit))) / 20


# ----------------------------------------------------------------------------- tests


def test_golden_demo_data_is_byte_identical(golden_demo: Path) -> None:
    n_files = sum(1 for p in golden_demo.rglob("*") if p.is_file())
    _compare("demo", {"params": DEMO, "n_files": n_files, "sha256": tree_sha256(golden_demo)})


def test_golden_gender_pipeline(gender_first_steps: Any, golden_demo: Path) -> None:
    splits, pipeline, steps = gender_first_steps
    assert pipeline.cache_mode != "off" and all(b["dtype"] == "torch.uint8" for b in steps.batches)
    _compare("gender_pipeline", {
        "counts": splits.counts(), "report_split": splits.report_split,
        "paths_sha256": {part: _paths_sha256(df["path"], golden_demo) for part, df in splits.parts().items()},
        "sampler_epoch0": steps.order, "first_batches": steps.batches,
    })


def test_golden_gender_forward(gender_first_steps: Any) -> None:
    _, _, steps = gender_first_steps
    _compare("gender_forward", {"losses": steps.losses, "first_logits": steps.first_outputs.tolist()}, forward=True)


def test_golden_recognition_pipeline(recognition_first_steps: Any, golden_demo: Path) -> None:
    splits, steps = recognition_first_steps
    assert all(b["dtype"] == "torch.uint8" for b in steps.batches)
    parts = {"train": splits.train, "fold": splits.fold, "report": splits.report}
    _compare("recognition_pipeline", {
        "n_rows": {part: len(df) for part, df in parts.items()},
        "paths_sha256": {part: _paths_sha256(df["path"], golden_demo) for part, df in parts.items()},
        "train_identities": splits.train_identities, "fold_identities": splits.fold_identities,
        "reported_split": splits.reported_split, "sampler_epoch0": steps.order, "first_batches": steps.batches,
    })


def test_golden_recognition_forward(recognition_first_steps: Any) -> None:
    _, steps = recognition_first_steps
    _compare("recognition_forward", {"losses": steps.losses, "first_logits": steps.first_outputs.tolist()},
             forward=True)


def test_golden_gender_metrics(golden_demo: Path) -> None:
    """Task A's threshold choice and metrics on seeded probabilities over the demo's Task_A tables."""
    fold, report = scan_task_a(golden_demo, splits=("train",)), scan_task_a(golden_demo, splits=("val",))
    y_fold, y_report = (df["label"].map(gender_mod.CLASS_TO_IDX).to_numpy(np.int64) for df in (fold, report))
    p_fold, p_report = _probabilities(y_fold, fold["person"], 1), _probabilities(y_report, report["person"], 2)
    thresholds = {c: choose_threshold(y_fold, p_fold, c) for c in ("balanced_accuracy", "f1", "f1_macro", "mcc")}
    threshold = thresholds["balanced_accuracy"]
    metrics = binary_metrics(y_report, p_report, threshold)
    actual: dict[str, Any] = {k: metrics[k] for k in GENDER_METRIC_KEYS}
    actual["thresholds"] = thresholds
    actual["at_0.5"] = {k: v for k, v in binary_metrics(y_report, p_report, 0.5).items()
                        if k in GENDER_METRIC_KEYS and k != "threshold"}
    actual["ece"] = expected_calibration_error(y_report, p_report)
    actual["per_distortion"] = {}
    for i, kind in enumerate(DISTORTION_TYPES):
        p_kind = _probabilities(y_report, report["person"], 10 + i, spread=1.5 * (1 + 0.3 * i))
        m = binary_metrics(y_report, p_kind, threshold)
        actual["per_distortion"][kind] = {k: m[k] for k in GENDER_DISTORTION_KEYS}
    _compare("gender_metrics", actual)


def test_golden_recognition_metrics(golden_demo: Path) -> None:
    """Task B's thresholds (chosen on the fold) and protocol metrics on seeded embeddings over the demo's tables."""
    config = RecognitionConfig(data_root=str(golden_demo), output_dir="unused", **RECOGNITION)
    splits = rec_mod.recognition_splits(config)
    fold_emb = _embeddings(splits.fold, seed=1)
    report_emb = _embeddings(splits.report, seed=2)
    chosen = choose_thresholds(splits.fold, fold_emb, method=config.threshold_method, seed=config.seed)
    metrics = protocol_metrics(splits.report, report_emb, chosen["threshold"], chosen["strict_threshold"],
                               seed=config.seed)
    actual: dict[str, Any] = {k: metrics[k] for k in RECOGNITION_METRIC_KEYS}
    actual["fold_thresholds"] = {k: chosen["details"][k] for k in ("threshold", "threshold_std", "fold_thresholds",
                                                                   "accuracy_mean")}
    actual["fold_strict_threshold"] = chosen["strict_threshold"]
    for prefix in ("", "strict_"):
        actual[f"{prefix}per_distortion_metrics"] = {
            kind: {k: m[k] for k in RECOGNITION_DISTORTION_KEYS}
            for kind, m in metrics[f"{prefix}per_distortion_metrics"].items()}
    _compare("recognition_metrics", actual)


# ----------------------------------------------------------------------------- the end-to-end tiny runs


@pytest.fixture(scope="module")
def gender_run(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory, module_one_thread: None) -> Any:
    out = tmp_path_factory.mktemp("golden_gender")
    return gender_mod.train_gender(gender_mod.GenderConfig(data_root=str(golden_demo), output_dir=str(out), **GENDER))


@pytest.fixture(scope="module")
def recognition_run(golden_demo: Path, tmp_path_factory: pytest.TempPathFactory, module_one_thread: None) -> Any:
    out = tmp_path_factory.mktemp("golden_recognition")
    return train_recognition(RecognitionConfig(data_root=str(golden_demo), output_dir=str(out), **RECOGNITION))


def _finite(metrics: dict[str, Any], keys: tuple[str, ...]) -> None:
    bad = {k: metrics[k] for k in keys if not (isinstance(metrics[k], (int, float)) and math.isfinite(metrics[k]))}
    assert not bad, f"not finite numbers: {bad}"


def test_golden_gender_run(gender_run: Any) -> None:
    m = gender_run.metrics
    _finite(m, ("accuracy", "balanced_accuracy", "roc_auc", "brier", "ece", "threshold"))
    assert set(m["per_distortion"]) == set(DISTORTION_TYPES) and len(gender_run.history) == GENDER["epochs"]
    counts = ("n_report_images", "n_val_fold_images", "n_train_images", "n_report_persons", "n_val_fold_persons",
              "n_train_persons", "n", "n_positive", "epochs_run", "report_split")
    _compare("gender_run", {**{k: m[k] for k in counts}, "config": GENDER})


def test_golden_recognition_run(recognition_run: Any) -> None:
    m = recognition_run.metrics
    _finite(m, ("top1", "strict_top1", "roc_auc", "eer", "threshold", "strict_threshold", "fold_top1"))
    # The reported numbers are the protocol on the run's own saved embeddings and thresholds.
    table, emb = load_embeddings(recognition_run.output_dir, m["reported_role"])
    again = protocol_metrics(table, emb, recognition_run.threshold, recognition_run.strict_threshold,
                             seed=RECOGNITION["seed"])
    scalar = ("top1", "top5", "roc_auc", "eer", "match_accuracy", "strict_top1", "strict_roc_auc", "per_distortion")
    assert {k: again[k] for k in scalar} == {k: m[k] for k in scalar}
    counts = ("n_probes", "n_genuine", "n_impostor", "n_pairs", "n_gallery", "n_identities", "strict_n_probes",
              "strict_n_impostor", "strict_n_excluded", "n_train_identities", "n_train_images", "n_fold_identities",
              "epochs_run", "reported_split", "reported_role")
    _compare("recognition_run", {**{k: m[k] for k in counts}, "config": RECOGNITION})


def test_golden_file_holds_one_section_per_test() -> None:
    """One expected value per key for every CPU: no per-machine variants, no section without its test.

    Runs last: under ``FACECOM_UPDATE_GOLDEN=1`` the tests above have rewritten the file by then.
    """
    assert set(_load_golden()) - {"_about", "_made_with"} == set(SECTIONS)
