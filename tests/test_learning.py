"""Both training pipelines actually learn: the trained model beats the untrained one on the fold.

Guards the training refactor: a pipeline that runs, writes checkpoints and metrics but no longer
learns (a detached loss, a frozen optimizer, a broken sampler or label mapping) passes every
contract test; it fails these.

"Untrained" is the very model the run starts from (same seed, same construction), measured by the
same code path: ``fit`` is handed an empty training loader for one epoch, so it makes no optimizer
step and no training-mode forward pass (batch-norm statistics untouched), then runs the pipeline's
own ``evaluate_fn`` on the fold, writes ``best.pt`` and returns; everything after ``fit`` in
``train_gender`` / ``train_recognition`` (threshold on the fold, fold and reported metrics) runs
unchanged.

Each test generates its own synthetic demo (a bit larger than the session's ``demo_root``, for a
stable signal), runs on the CPU with one thread and takes about a minute at most.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from facecom_utils.gender import pipeline as gender_mod
from facecom_utils import recognition as rec_mod
from facecom_utils.data.demo import make_demo_dataset

pytestmark = pytest.mark.slow


def _untrained_fit(real_fit: Any) -> Any:
    """``fit`` that trains for zero steps but otherwise behaves as a one-epoch run (evaluates, saves)."""

    def fit(model, train_loader, loss_fn, evaluate_fn=None, config=None, checkpoint_dir=None, extra_state=None,
            on_epoch_end=None):
        return real_fit(model, [], loss_fn, evaluate_fn, dataclasses.replace(config, epochs=1), checkpoint_dir,
                        extra_state, on_epoch_end)

    return fit


def _train_both(module: Any, train: Any, config: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, float]:
    """``(untrained run, trained run, seconds of the trained run)`` of one config."""
    real_fit = module.fit
    monkeypatch.setattr(module, "fit", _untrained_fit(real_fit))
    untrained = train(dataclasses.replace(config, output_dir=str(Path(config.output_dir) / "untrained")))
    monkeypatch.setattr(module, "fit", real_fit)
    t0 = time.perf_counter()
    trained = train(dataclasses.replace(config, output_dir=str(Path(config.output_dir) / "trained")))
    return untrained, trained, time.perf_counter() - t0


def test_train_gender_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    # 120 people (half with the female cues), two photos each: a fold of ~36 people, ~65 images.
    root = make_demo_dataset(tmp_path / "demo_gender", seed=0, train_identities=120, val_identities=4,
                             clean_per_identity=2, image_size=64, female_fraction=0.5)
    config = gender_mod.GenderConfig(
        data_root=str(root), output_dir=str(tmp_path / "run"), pretrained="offline", image_size=64, epochs=6,
        batch_size=16, eval_batch_size=64, val_fraction=0.3, patience=None, device="cpu", progress=False,
        evaluate_distortions=False, seed=0,
    )
    untrained, trained, seconds = _train_both(gender_mod, gender_mod.train_gender, config, monkeypatch)

    # Same fold, same evaluate_fn (threshold chosen on the fold), best epoch vs the starting model.
    assert list(untrained.fold_probabilities["path"]) == list(trained.fold_probabilities["path"])
    assert untrained.history["train_loss"].tolist() == [0.0] and len(trained.history) == 6
    before = untrained.val_metrics["balanced_accuracy"]
    after = trained.val_metrics["balanced_accuracy"]
    print(f"\nTask A fold balanced accuracy: untrained {before:.4f}, trained {after:.4f} "
          f"(roc_auc {untrained.val_metrics['roc_auc']:.4f} -> {trained.val_metrics['roc_auc']:.4f}); "
          f"training {seconds:.1f} s")
    assert after >= 0.75, after
    assert after >= before + 0.15, (before, after)


def test_train_recognition_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    # 60 identities (~42 train, ~18 fold), two clean photos each (frontal ones: one) + 7 distortions.
    root = make_demo_dataset(tmp_path / "demo_recognition", seed=0, train_identities=60, val_identities=3,
                             clean_per_identity=2, image_size=48)
    config = rec_mod.RecognitionConfig(
        data_root=str(root), output_dir=str(tmp_path / "run"), pretrained="offline", image_size=48, epochs=10,
        batch_size=32, samples_per_epoch=512, embedding_dim=64, backbone_lr_scale=1.0, val_fraction=0.3,
        embedding_source="neck", flip_tta=False, patience=None, device="cpu", progress=False, seed=0,
        max_identities=None,
    )
    untrained, trained, seconds = _train_both(rec_mod.pipeline, rec_mod.train_recognition, config, monkeypatch)

    assert untrained.fold_identities == trained.fold_identities
    assert untrained.history["train_loss"].tolist() == [0.0] and len(trained.history) == 10
    n_fold = trained.metrics["n_fold_identities"]
    chance = 1.0 / n_fold
    before, after = untrained.metrics["fold_top1"], trained.metrics["fold_top1"]
    print(f"\nTask B fold top-1 ({n_fold} identities, chance {chance:.4f}): untrained {before:.4f}, "
          f"trained {after:.4f} (strict {untrained.metrics['fold_strict_top1']:.4f} -> "
          f"{trained.metrics['fold_strict_top1']:.4f}); training {seconds:.1f} s")
    assert after >= 3 * chance, (after, chance)
    assert after >= before + 0.10, (before, after)
