"""Score every restoration on FACECOM's own (distorted, clean) pairs.

Every distorted training image ``<id>/distortion/<stem>_<type>.jpg`` has its clean source
``<id>/<stem>.jpg``, so a restoration can be scored directly: PSNR (and SSIM) of the distorted
image to the clean one, and of the restored image to the clean one. For a seeded sample of
``--identities`` Task B training identities (all their clean images and distorted copies) this
prints one markdown table of the mean PSNR gain in dB per (distortion type x restoration) cell,
the same for SSIM, and the cost of each restoration on the clean images themselves (the mean
PSNR of restore(clean) to clean; higher is better, 50 dB means "nearly untouched").

With ``--tune`` it also scores a few settings of each restoration's parameters on the type it
is for (and on the clean images), which is how the defaults in ``facecom_utils.face.restoration``
were chosen. The type labels are used here only to score; the restorations never see them.

Usage:
    python experiments/measure_restorations.py --data-root ../shared/facecom --identities 30 --tune
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

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
    psnr = min(60.0, float(peak_signal_noise_ratio(clean, image, data_range=255)))
    ssim = float(structural_similarity(clean, image, channel_axis=2, data_range=255))
    return psnr, ssim


def measure(data_root: Path, identities: int, seed: int, tune: bool) -> None:
    """Print the gain table (and with ``tune`` the tuning tables)."""
    start = time.perf_counter()
    pairs = sample_pairs(data_root, identities, seed)
    cleans = sorted({c for _, c, _ in pairs})
    gain: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    base: dict[str, list[tuple[float, float]]] = defaultdict(list)
    cost: dict[str, list[float]] = defaultdict(list)
    tuned: dict[tuple[str, str], list[float]] = defaultdict(list)
    for distorted, clean, kind in pairs:
        image, target = load_pair(distorted, clean)
        p0, s0 = scores(image, target)
        base[kind].append((p0, s0))
        for name, fn in RESTORATIONS.items():
            p, s = scores(fn(image), target)
            gain[kind, name].append((p - p0, s - s0))
        if tune:
            for name, (for_kind, settings) in TUNING.items():
                if kind == for_kind:
                    for label, fn in settings.items():
                        tuned[name, label].append(scores(fn(image), target)[0] - p0)
    for clean in cleans:
        target = np.asarray(load_image(clean))
        for name, fn in RESTORATIONS.items():
            cost[name].append(scores(fn(target), target)[0])
        if tune:
            for name, (_, settings) in TUNING.items():
                for label, fn in settings.items():
                    cost[f"{name} {label}"].append(scores(fn(target), target)[0])

    names = list(RESTORATIONS)
    print(f"{identities} identities (seed {seed}): {len(cleans)} clean images, {len(pairs)} distorted copies, "
          f"{time.perf_counter() - start:.0f} s\n")
    print("Mean PSNR gain (dB) of restored-vs-clean over distorted-vs-clean; base = distorted-vs-clean PSNR / SSIM\n")
    print("| type | n | base PSNR | base SSIM | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    for kind in DISTORTION_TYPES:
        if base[kind]:
            b = np.mean(base[kind], axis=0)
            cells = [f"{np.mean([g[0] for g in gain[kind, n]]):+.2f}" for n in names]
            print(f"| {kind} | {len(base[kind])} | {b[0]:.2f} | {b[1]:.3f} | " + " | ".join(cells) + " |")
    print("\nMean SSIM gain\n")
    print("| type | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for kind in DISTORTION_TYPES:
        if base[kind]:
            cells = [f"{np.mean([g[1] for g in gain[kind, n]]):+.3f}" for n in names]
            print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\nClean-image cost: PSNR(restore(clean), clean), mean and min over clean images (60 = identical)\n")
    print("| restoration | mean dB | min dB |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {np.mean(cost[name]):.2f} | {np.min(cost[name]):.2f} |")
    if tune:
        print("\nTuning: PSNR gain on the type each restoration is for, and clean cost (mean / min dB)\n")
        print("| restoration | setting | type | gain dB | clean mean dB | clean min dB |")
        print("|---|---|---|---|---|---|")
        for name, (kind, settings) in TUNING.items():
            for label in settings:
                c = cost[f"{name} {label}"]
                print(f"| {name} | {label} | {kind} | {np.mean(tuned[name, label]):+.2f} | "
                      f"{np.mean(c):.2f} | {np.min(c):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/facecom"))
    parser.add_argument("--identities", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune", action="store_true", help="also score a few settings of each restoration")
    args = parser.parse_args()
    measure(args.data_root, args.identities, args.seed, args.tune)


if __name__ == "__main__":
    main()
