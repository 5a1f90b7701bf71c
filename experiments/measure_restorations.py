"""Score every restoration on FACECOM's own (distorted, clean) pairs.

Feeds the table in ``facecom_utils.face.restoration``'s docstring and ``docs/results.md`` § "Restorations
on FACECOM's pairs" with ``<out>/restorations.md``, rewritten from ``<out>/measurements.json`` (which a
run with the same arguments reuses)::

    python experiments/measure_restorations.py --tune    # FACECOM in the repository -> reports/measure_restorations/
    python experiments/measure_restorations.py --data-root /data/facecom --identities 30 --tune

Every distorted training image ``<id>/distortion/<stem>_<type>.jpg`` has its clean source
``<id>/<stem>.jpg``, so a restoration can be scored directly: PSNR (and SSIM) of the distorted
image to the clean one, and of the restored image to the clean one. For a seeded sample of
``--identities`` Task B training identities (all their clean images and distorted copies) the file
holds one table of the mean PSNR gain in dB per (distortion type x restoration) cell, the same for
SSIM, and the cost of each restoration on the clean images themselves (the mean PSNR of
restore(clean) to clean; higher is better, 50 dB means "nearly untouched").

With ``--tune`` it also scores a few settings of each restoration's parameters on the type it
is for (and on the clean images), which is how the defaults in ``facecom_utils.face.restoration``
were chosen. The type labels are used here only to score; the restorations never see them.
Cost: 4 identities with ``--tune`` (119 copies) took 77 s of CPU, 398 s of wall time on a busy 2-core
machine; the default 30 identities hold about 4 times as many copies. The file's first line gives the seconds.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from _common import add_data_root, cached, data_root, markdown_table, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.layout import DISTORTION_TYPES, load_image
from facecom_utils.face.restoration import RESTORATIONS, deblur, dehaze, denoise, derain, lowlight

# A few settings per restoration, scored on the type each is for ("--tune").
TUNING: dict[str, tuple[str, dict[str, Callable[[np.ndarray], np.ndarray]]]] = {
    "denoise": ("noisy", {
        **{f"impulses only, size={s} thr={t}": partial(denoise, size=s, threshold=t, dense_share=1.0)
           for s in (3, 5) for t in (30, 60)},
        **{f"gated, dense median {d}": partial(denoise, dense_size=d) for d in (3, 5, 7)},
    }),
    "derain": ("rainy", {
        f"size={s} weight={w} min={m}": partial(derain, size=s, weight=w, min_streaks=m)
        for s in (5, 7) for w in (0.15, 0.2) for m in (0.0, 0.1, 0.15)
    }),
    "deblur": ("blurred", {
        f"sigma={s} it={n}": partial(deblur, sigma=s, iterations=n) for s in (1.5, 2.0) for n in (4, 8, 16)
    }),
    "dehaze": ("foggy", {
        f"pct={lo}-{hi} white={w} min={m}": partial(dehaze, low=lo, high=hi, white=w, min_black=m)
        for lo, hi in ((0.5, 99.5), (1.0, 99.0)) for w in (230.0, 245.0) for m in (16.0, 24.0)
    }),
    "lowlight": ("lowlight", {
        f"pct={p} target={t}": partial(lowlight, percentile=p, target=t) for p in (95.0, 99.0) for t in (215.0, 235.0)
    }),
}


def sample_pairs(data_root: Path, identities: int, seed: int) -> list[tuple[Path, Path, str]]:
    """``(distorted, clean, type)`` for every distorted copy of a seeded sample of identities."""
    train = data_root / "Task_B" / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train} not found; expected FACECOM's Task_B/train folder")
    folders = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    chosen = np.random.default_rng(seed).choice(len(folders), size=min(identities, len(folders)), replace=False)
    pairs = []
    for folder in (folders[i] for i in sorted(chosen)):
        for distorted in sorted((folder / "distortion").glob("*.jpg")):
            stem, _, kind = distorted.stem.rpartition("_")
            clean = folder / f"{stem}.jpg"
            if kind in DISTORTION_TYPES and clean.is_file():
                pairs.append((distorted, clean, kind))
    return pairs


def load_pair(distorted: Path, clean: Path) -> tuple[np.ndarray, np.ndarray]:
    """Both images as uint8 RGB arrays, the distorted one resized to the clean one's size."""
    target = load_image(clean)
    image = load_image(distorted)
    if image.size != target.size:
        image = image.resize(target.size, Image.BILINEAR)
    return np.asarray(image), np.asarray(target)


def scores(image: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of ``image`` to ``clean``; PSNR capped at 60 dB for identical images."""
    with np.errstate(divide="ignore"):  # identical images: infinite PSNR, capped
        psnr = min(60.0, float(peak_signal_noise_ratio(clean, image, data_range=255)))
    ssim = float(structural_similarity(clean, image, channel_axis=2, data_range=255))
    return psnr, ssim


def measure(data_root: Path, identities: int, seed: int, tune: bool) -> dict[str, Any]:
    """Scores every restoration (and with ``tune`` every setting of :data:`TUNING`) on a sample of pairs.

    Args:
        data_root: FACECOM's root.
        identities: How many Task B training identities to sample.
        seed: The sample's seed.
        tune: Whether to score :data:`TUNING` too.

    Returns:
        JSON-able: ``pairs`` and ``clean`` (counts), ``seconds``, ``base`` (type -> [n, PSNR, SSIM] of
        distorted to clean), ``gain`` (type -> restoration -> mean [PSNR, SSIM] gain), ``cost``
        (restoration or tuned setting -> [mean, min] PSNR of restore(clean) to clean) and ``tuned``
        (``"<restoration> <setting>"`` -> mean PSNR gain on its type).
    """
    start = time.perf_counter()
    pairs = sample_pairs(data_root, identities, seed)
    cleans = sorted({c for _, c, _ in pairs})
    gain: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    base: dict[str, list[tuple[float, float]]] = defaultdict(list)
    cost: dict[str, list[float]] = defaultdict(list)
    tuned: dict[str, list[float]] = defaultdict(list)
    for distorted, clean, kind in pairs:
        image, target = load_pair(distorted, clean)
        p0, s0 = scores(image, target)
        base[kind].append((p0, s0))
        for name, fn in RESTORATIONS.items():
            p, s = scores(fn(image), target)
            gain[kind, name].append((p - p0, s - s0))
        for name, (for_kind, settings) in (TUNING.items() if tune else ()):
            for label, fn in (settings.items() if kind == for_kind else ()):
                tuned[f"{name} {label}"].append(scores(fn(image), target)[0] - p0)
    for clean in cleans:
        target = np.asarray(load_image(clean))
        for name, fn in RESTORATIONS.items():
            cost[name].append(scores(fn(target), target)[0])
        for name, (_, settings) in (TUNING.items() if tune else ()):
            for label, fn in settings.items():
                cost[f"{name} {label}"].append(scores(fn(target), target)[0])
    return {"pairs": len(pairs), "clean": len(cleans), "seconds": time.perf_counter() - start,
            "base": {k: [len(v), *np.mean(v, axis=0).tolist()] for k, v in base.items()},
            "gain": {k: {n: np.mean(gain[k, n], axis=0).tolist() for n in RESTORATIONS} for k in base},
            "cost": {k: [float(np.mean(v)), float(np.min(v))] for k, v in cost.items()},
            "tuned": {k: float(np.mean(v)) for k, v in tuned.items()}}


def restoration_tables(result: dict[str, Any], identities: int, seed: int) -> str:
    """The Markdown of :func:`measure`'s result: PSNR gain, SSIM gain, clean cost and (when measured) the tuning.

    Args:
        result: :func:`measure`'s result (as read back from JSON).
        identities: The sample's size, for the first line.
        seed: The sample's seed, for the first line.

    Returns:
        A first line (what was measured, in how many seconds), then each table under a one-line title.
    """
    names = list(RESTORATIONS)
    kinds = [k for k in DISTORTION_TYPES if k in result["base"]]
    b = result["base"]
    g = result["gain"]
    parts = [
        f"{identities} identities (seed {seed}): {result['clean']} clean images, {result['pairs']} distorted copies, "
        f"{result['seconds']:.0f} s",
        "Mean PSNR gain (dB) of restored-vs-clean over distorted-vs-clean; base = distorted-vs-clean PSNR / SSIM",
        markdown_table(["type", "n", "base PSNR", "base SSIM", *names],
                       [[k, b[k][0], f"{b[k][1]:.2f}", f"{b[k][2]:.3f}", *(f"{g[k][n][0]:+.2f}" for n in names)]
                        for k in kinds]),
        "Mean SSIM gain",
        markdown_table(["type", *names], [[k, *(f"{g[k][n][1]:+.3f}" for n in names)] for k in kinds]),
        "Clean-image cost: PSNR(restore(clean), clean), mean and min over clean images (60 = identical)",
        markdown_table(["restoration", "mean dB", "min dB"],
                       [[n, f"{result['cost'][n][0]:.2f}", f"{result['cost'][n][1]:.2f}"] for n in names]),
    ]
    if result["tuned"]:
        rows = [[name, label, kind, f"{result['tuned'][f'{name} {label}']:+.2f}",
                 *(f"{v:.2f}" for v in result["cost"][f"{name} {label}"])]
                for name, (kind, settings) in TUNING.items() for label in settings
                if f"{name} {label}" in result["tuned"]]
        parts += ["Tuning: PSNR gain on the type each restoration is for, and clean cost (mean / min dB)",
                  markdown_table(["restoration", "setting", "type", "gain dB", "clean mean dB", "clean min dB"], rows)]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--identities", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune", action="store_true", help="also score a few settings of each restoration")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "measure_restorations")
    args = parser.parse_args()
    root = data_root(args.data_root)
    result = cached(args.out / "measurements.json",
                    {"data_root": str(root), "identities": args.identities, "seed": args.seed, "tune": args.tune},
                    lambda: measure(root, args.identities, args.seed, args.tune))
    text = restoration_tables(result, args.identities, args.seed)
    print(write_text(args.out / "restorations.md", text).read_text())


if __name__ == "__main__":
    main()
