"""The training engine: one readable fit loop, shared by Task A and Task B.

:func:`fit` trains any ``nn.Module`` given a ``loss_fn(model, batch) -> loss`` and an optional
``evaluate_fn(model) -> dict`` of validation metrics. Around that one loop it provides:

* automatic mixed precision on CUDA (float16 + GradScaler; bfloat16 on request elsewhere);
* Adam/AdamW/SGD with per-step cosine annealing after a linear warm-up, and an optional
  smaller learning rate for parameters under a module named ``backbone``;
* early stopping on a monitored validation metric (``mode`` max/min, ``patience``);
* ``best.pt`` and ``last.pt`` written atomically every epoch, loadable with
  ``torch.load(weights_only=True)``; resume from ``last.pt`` after an interruption gives the same
  result as an uninterrupted run, because every epoch's randomness is re-seeded from
  ``seed + epoch`` (data order, augmentation, dropout);
* a per-epoch history table, tqdm progress bars, throughput;
* torch.distributed awareness: when a process group is initialised (``torchrun``), the model
  is wrapped in DistributedDataParallel, samplers get ``set_epoch``, only rank 0 evaluates and
  writes checkpoints, and rank 0's decisions (history row, early stop) are broadcast.

Example::

    def loss_fn(model, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(model(x), y.float())

    result = fit(model, train_loader, loss_fn, evaluate_fn, TrainConfig(epochs=10), "runs/x")
    result.history  # DataFrame, one row per epoch

Under DDP, ``loss_fn`` must run its forward pass by calling ``model(...)`` (the wrapper);
``evaluate_fn`` receives the bare module, in eval mode, under ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from facecom_utils.common.checkpoints import load_checkpoint, save_checkpoint, to_plain
from facecom_utils.common.distributed import distributed_info
from facecom_utils.common.progress import ProgressLog, steps

__all__ = [
    "FitResult",
    "TrainConfig",
    "build_optimizer",
    "build_scheduler",
    "distributed_info",
    "fit",
    "move_to_device",
    "resolve_amp_dtype",
    "preserved_random_state",
    "seed_everything",
    "select_device",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
EvaluateFn = Callable[[nn.Module], Mapping[str, Any]]


# ----------------------------------------------------------------------------- basics


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block (e.g. drawing a batch to look at) without moving Python's, numpy's or torch's random
    state: what follows draws exactly what it would have drawn without the block."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seeds python's ``random``, numpy's global generator and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)




def select_device(device: str | torch.device = "auto") -> torch.device:
    """Chooses the compute device.

    Args:
        device: ``"auto"`` (cuda, then mps, then cpu), or an explicit ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"``. Under torchrun, ``"auto"``/``"cuda"`` pick ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: The requested accelerator is not available.
    """
    name = str(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available; use device='auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' but MPS is not available; use device='auto' or 'cpu'")
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def resolve_amp_dtype(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting, or None for full precision.

    ``"auto"``/True: float16 on CUDA, off elsewhere (bfloat16 autocast is slower than float32
    on most CPUs). ``"fp16"``/``"float16"``, ``"bf16"``/``"bfloat16"``: that dtype.
    ``"none"``/False: off. float16 is only honoured on CUDA.
    """
    key = {True: "auto", False: "none", None: "none"}.get(amp, amp)  # type: ignore[arg-type]
    key = str(key).lower()
    if key == "auto":
        return torch.float16 if device.type == "cuda" else None
    if key in ("bf16", "bfloat16"):
        return torch.bfloat16
    if key in ("fp16", "float16"):
        if device.type != "cuda":
            warnings.warn(f"amp={amp!r} needs CUDA; training in float32 on {device}", stacklevel=2)
            return None
        return torch.float16
    if key in ("none", "off", "false", "fp32", "float32"):
        return None
    raise ValueError(f"amp must be 'auto', 'fp16', 'bf16' or 'none', got {amp!r}")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor in a (nested) tuple/list/dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, Mapping) else batch
    for item in items:
        if isinstance(item, torch.Tensor):
            return int(item.shape[0])
    return 0


# ----------------------------------------------------------------------------- config + optimisation


@dataclass
class TrainConfig:
    """Settings of :func:`fit` (plain values, saved in every checkpoint).

    Attributes:
        epochs: Maximum number of epochs.
        lr: Peak learning rate (of the non-backbone parameters).
        weight_decay: Decoupled (adamw) or L2 (adam, sgd) weight decay; never applied to
            biases and normalisation parameters.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (momentum 0.9, nesterov).
        backbone_lr_scale: Learning-rate multiplier for parameters under a module named
            ``backbone`` (pretrained features usually want a smaller step than a fresh head).
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        min_lr_ratio: Final learning rate of the cosine schedule, as a fraction of the peak.
        monitor: Metric for early stopping and ``best.pt``: a key of ``evaluate_fn``'s dict,
            or ``"train_loss"``.
        mode: ``"max"`` or ``"min"``: whether a larger ``monitor`` is better.
        patience: Stop after this many epochs without improvement (None: never stop early).
        min_delta: Smallest change that counts as an improvement.
        amp: ``"auto"``, ``"fp16"``, ``"bf16"`` or ``"none"`` (see :func:`resolve_amp_dtype`).
        grad_clip: Clip the global gradient norm to this value (None: no clipping).
        max_train_seconds: Time budget: stop after the epoch when one more epoch of the same
            length would exceed it (None: no budget). The run then counts as stopped early.
        seed: Base seed; epoch ``e`` runs with seed ``seed + e``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        resume: Continue from ``<checkpoint_dir>/last.pt`` when it exists.
        restore_best: Load the best epoch's weights into the model when training ends.
        progress: Show tqdm progress bars (rank 0 only).
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    backbone_lr_scale: float = 1.0
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    monitor: str = "train_loss"
    mode: str = "min"
    patience: int | None = 5
    min_delta: float = 0.0
    amp: str | bool = "auto"
    grad_clip: float | None = None
    max_train_seconds: float | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = True
    restore_best: bool = True
    progress: bool = True


def _is_backbone_param(name: str) -> bool:
    return "backbone" in name.split(".")[:-1]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer with up to four parameter groups: (backbone | rest) x (decay | no decay)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (_is_backbone_param(name), param.ndim > 1)
            groups.setdefault(key, []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": config.lr * (config.backbone_lr_scale if is_backbone else 1.0),
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (is_backbone, decay), params in sorted(groups.items())
    ]
    name = config.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {config.optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to the peak, then cosine annealing to ``min_lr_ratio``."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: One row per epoch: ``epoch``, ``train_loss``, ``val_<metric>`` for every
            scalar metric of ``evaluate_fn``, ``lr``, ``seconds`` (training time of the epoch),
            ``images_per_second`` (over all processes), ``eval_seconds``.
        best_epoch: 1-based epoch of the best monitored value (0 if none).
        best_score: That value.
        best_metrics: ``evaluate_fn``'s full dict at the best epoch.
        best_path: ``best.pt`` (None without a checkpoint folder).
        last_path: ``last.pt`` (None without a checkpoint folder).
        stopped_early: Whether early stopping ended the run.
        train_seconds: Total training time (excluding evaluation), summed over resumed parts.
        images_per_second: Training throughput over the whole run.
        device: The device trained on.
    """

    history: pd.DataFrame
    best_epoch: int
    best_score: float | None
    best_metrics: dict[str, Any]
    best_path: Path | None
    last_path: Path | None
    stopped_early: bool
    train_seconds: float
    images_per_second: float
    device: str = "cpu"


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# Where/how a run executes, and evaluation-only settings (``tta_crops``: the views of the final
# embeddings) -- changing them must not discard a resumable run.
_NOT_SETTINGS = frozenset({"resume", "progress", "device", "num_workers", "output_dir", "eval_batch_size",
                           "tta_crops"})


def _run_settings(payload: Mapping[str, Any]) -> Any:
    """What must match for ``last.pt`` to be resumed: both configs, minus where/how it runs."""
    return to_plain({key: {k: v for k, v in dict(payload.get(key) or {}).items() if k not in _NOT_SETTINGS}
                     for key in ("config", "train_config")})


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def _broadcast(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fit(
    model: nn.Module,
    train_loader: Any,
    loss_fn: LossFn,
    evaluate_fn: EvaluateFn | None = None,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    extra_state: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> FitResult:
    """Trains ``model``; see the module docstring for everything it takes care of.

    Args:
        model: The model (moved to the chosen device; wrapped in DDP under torch.distributed).
        train_loader: Iterable of batches (a DataLoader; its sampler gets ``set_epoch``).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``; the batch is already on the device
            and the call runs under autocast.
        evaluate_fn: ``evaluate_fn(model) -> metrics`` on the validation fold, run on rank 0
            after every epoch; None to monitor ``train_loss``.
        config: Training settings.
        checkpoint_dir: Where ``best.pt`` / ``last.pt`` go (None: no checkpoints, no resume).
        extra_state: Plain values stored in every checkpoint (``task``, ``config``,
            ``class_to_idx``, ...). ``config`` defaults to the TrainConfig.
        on_epoch_end: ``callback(epoch, history_row)`` after the epoch's checkpoints are written
            (raising in it interrupts training cleanly; resume continues from there).

    Returns:
        A :class:`FitResult`. With ``restore_best`` the model holds the best epoch's weights.
    """
    cfg = config or TrainConfig()
    if cfg.mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {cfg.mode!r}")
    rank, world_size = distributed_info()
    is_main = rank == 0
    device = select_device(cfg.device)
    model.to(device)
    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    amp_dtype = resolve_amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    best_path = ckpt_dir / "best.pt" if ckpt_dir else None
    sign = 1.0 if cfg.mode == "max" else -1.0

    # Everything the loop carries from epoch to epoch (saved in last.pt for resuming).
    state: dict[str, Any] = {
        "epochs_done": 0, "best_score": None, "best_epoch": 0, "best_metrics": {},
        "bad_epochs": 0, "stopped": False, "train_seconds": 0.0, "train_images": 0, "history": [],
    }
    best_weights: dict[str, torch.Tensor] | None = None

    def payload_head() -> dict[str, Any]:
        return {"config": dataclasses.asdict(cfg), **(extra_state or {}), "train_config": dataclasses.asdict(cfg)}

    ckpt = load_checkpoint(last_path, map_location=device) if cfg.resume and last_path and last_path.is_file() else None
    if ckpt is not None and _run_settings(ckpt) != _run_settings(payload_head()):
        warnings.warn(f"{last_path}: left from a run with other settings; starting afresh (it will be overwritten)",
                      stacklevel=2)
        ckpt = None
    if ckpt is not None:  # resume the interrupted run exactly where it stopped
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["fit_state"])

    def payload(metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **payload_head(),
            "model": model.state_dict(),
            "model_config": getattr(model, "model_config", {}),
            "epoch": state["epochs_done"],
            "metrics": dict(metrics),
            "history": state["history"],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "fit_state": state,
        }

    epoch_bar = tqdm(total=cfg.epochs, initial=state["epochs_done"], desc="epochs", disable=not (cfg.progress and is_main))
    log = ProgressLog(steps(train_loader, cfg.epochs - state["epochs_done"]), "training batches", enabled=is_main)
    for epoch in range(state["epochs_done"], cfg.epochs):
        if state["stopped"]:
            break
        # Every epoch's randomness depends on (seed, epoch) only: resuming == not stopping.
        seed_everything(cfg.seed + epoch)
        _set_sampler_epoch(train_loader, epoch)

        # ---- train one epoch
        model.train()
        loss_sum = torch.zeros((), device=device)
        n_batches = n_images = 0
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (cfg.progress and is_main))
        for batch in bar:
            batch = move_to_device(batch, device)
            with _autocast(device, amp_dtype):
                loss = loss_fn(train_model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach().float()
            n_batches += 1
            n_images += _batch_size(batch)
            if n_batches % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / n_batches:.4f}")
            log.update(detail=f"epoch {epoch + 1}/{cfg.epochs}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        totals = torch.tensor([loss_sum.item(), n_batches, n_images], dtype=torch.float64, device=device)
        if world_size > 1:
            dist.all_reduce(totals)
            for buffer in model.buffers():  # batch-norm statistics: rank 0's, everywhere
                dist.broadcast(buffer, src=0)
        train_loss = float(totals[0] / max(1.0, float(totals[1])))
        epoch_images = int(totals[2])

        # ---- evaluate, keep the best, write checkpoints (rank 0), share the decision
        if is_main:
            t1 = time.perf_counter()
            metrics: dict[str, Any] = {}
            if evaluate_fn is not None:
                model.eval()
                with torch.no_grad():
                    metrics = dict(evaluate_fn(model))
                model.train()
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in _scalar_metrics(metrics).items()},
                "lr": max(group["lr"] for group in optimizer.param_groups),
                "seconds": seconds,
                "images_per_second": epoch_images / max(seconds, 1e-9),
                "eval_seconds": time.perf_counter() - t1,
            }
            if cfg.monitor in metrics:
                score = float(metrics[cfg.monitor])
            elif cfg.monitor in row:
                score = float(row[cfg.monitor])
            else:
                raise KeyError(f"monitor={cfg.monitor!r} is neither a metric of evaluate_fn "
                               f"({sorted(metrics)}) nor a history column ({sorted(row)})")
            improved = not math.isnan(score) and (
                state["best_score"] is None or sign * (score - state["best_score"]) > cfg.min_delta
            )
            if improved:
                state.update(best_score=score, best_epoch=epoch + 1, best_metrics=metrics, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epochs_done"] = epoch + 1
            state["train_seconds"] += seconds
            out_of_patience = cfg.patience is not None and state["bad_epochs"] >= cfg.patience
            out_of_time = cfg.max_train_seconds is not None and state["train_seconds"] + seconds > cfg.max_train_seconds
            state["stopped"] = out_of_patience or out_of_time
            state["train_images"] += epoch_images
            state["history"].append(row)
            if ckpt_dir is not None:
                ckpt = to_plain(payload(metrics))
                if improved:
                    save_checkpoint(best_path, ckpt)  # best before last: a crash in between is redone on resume
                save_checkpoint(last_path, ckpt)
            elif improved and cfg.restore_best:
                best_weights = copy.deepcopy(model.state_dict())
            epoch_bar.set_postfix({cfg.monitor: f"{score:.4f}", "best": state["best_epoch"]})
        state = _broadcast(state, world_size)
        epoch_bar.update(1)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, state["history"][-1])
    epoch_bar.close()
    log.close()

    if world_size > 1:
        dist.barrier()
    if cfg.restore_best:
        if best_path is not None and best_path.is_file():
            model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
        elif best_weights is not None:
            model.load_state_dict(best_weights)
    return FitResult(
        history=pd.DataFrame(state["history"]),
        best_epoch=int(state["best_epoch"]),
        best_score=state["best_score"],
        best_metrics=dict(state["best_metrics"]),
        best_path=best_path if best_path is not None and best_path.is_file() else None,
        last_path=last_path if last_path is not None and last_path.is_file() else None,
        stopped_early=bool(state["stopped"]),
        train_seconds=float(state["train_seconds"]),
        images_per_second=state["train_images"] / max(state["train_seconds"], 1e-9),
        device=str(device),
    )
