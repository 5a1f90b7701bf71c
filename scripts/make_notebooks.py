"""Generate notebooks/01-04 from this script, so they stay thin, clean and reviewable.

Usage::

    python scripts/make_notebooks.py             # rewrite the notebooks (keeps stored checked outputs
                                                 # whose cell source did not change)
    python scripts/make_notebooks.py --execute   # also run them with their default parameters and
                                                 # store the outputs of the `# NBVAL_CHECK_OUTPUT` cells
    python scripts/make_notebooks.py --execute --only 01

Committed notebooks carry no outputs except the cells marked ``# NBVAL_CHECK_OUTPUT``: deterministic
numbers on the demo data (dataset counts), which ``pytest --nbval-lax notebooks/`` compares with a
fresh run. Every notebook: a markdown cell saying what it does and which protocol it follows, a cell
tagged ``parameters`` (papermill), one config dataclass, a banner on synthetic data, a closing summary
table and ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

from facecom_utils.gender import GenderConfig
from facecom_utils.recognition import RecognitionConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"


def md(text: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(source: str, tags: list[str] | None = None) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def parameters(source: str) -> NotebookNode:
    return code(source, tags=["parameters"])


def _literal(value: object) -> str:
    """A Python literal for a parameters cell (double-quoted strings, like the rest of the project)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def config_parameters(cls: type, head: list[str], main: dict[str, tuple[object, str]]) -> NotebookNode:
    """A ``parameters`` cell declaring every field of a config dataclass.

    ``head`` lines come first (data_root, output_dir); ``main`` fields follow with the notebook's demo
    default and a comment; every other field of ``cls`` is declared after them with the dataclass default,
    so any preset (``-f params/*.yml``) can set it. Comments must not contain ``=`` (papermill's parser).
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    lines = list(head)
    for name, (value, comment) in main.items():
        if name not in fields:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        lines.append(f"{name} = {_literal(value)}" + (f"  # {comment}" if comment else ""))
    rest = [n for n in fields if n not in main and n not in ("data_root", "output_dir")]
    if rest:
        lines.append(f"# every other field of {cls.__name__} (documented in its docstring); presets may set any of them")
    for name in rest:
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{name} = {_literal(default)}")
    for line in lines:
        assert "=" not in line.split("#", 1)[1] if "#" in line else True, f"'=' in a comment breaks papermill: {line}"
    return parameters("\n".join(lines))


def notebook(cells: list[NotebookNode]) -> NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.cells = cells
    return nb


# --------------------------------------------------------------------------------------------------
# 01 EDA
# --------------------------------------------------------------------------------------------------


def eda_notebook() -> NotebookNode:
    return notebook([
        md("""
# 01 · Exploratory data analysis of FACECOM

What is in the folders before anything is trained: how many images per split, class, identity and
distortion type; how imbalanced Task A is; the images' sizes and modes; how each distortion changes
brightness, contrast and sharpness; what the distortions look like beside their clean source; and
whether anything **leaks** between the training and the validation split.

**Protocol.** The folders are read as published (`Task_A/{train,val}/{female,male}/`,
`Task_B/{train,val}/<identity>/` with distorted copies in `<identity>/distortion/`) by
`facecom_utils.data`; nothing is modified. Pixel statistics are measured as in
`docs/FACECOM_DISTORTIONS.md` on a seeded sample per group (`property_sample`). The leakage check
looks for (1) people/identities present in both splits (Task A people from file names,
`First_Last_0001.jpg` → `First_Last`), (2) people filed under both labels, and (3) near-duplicate
images with a 256-bit perceptual hash (pHash, 2-D DCT of a 64×64 grey thumbnail): across the two
splits, and between *different* people of the same split (one person under two names defeats an
identity-disjoint fold). On FACECOM a clean image and its resized or blurred copy differ by ≤ 8 bits and
two random different people by ≥ 52; pairs within `max_hash_distance` count as near-duplicates, pairs of
different people up to `review_hash_distance` are listed as look-alikes to check by eye. All numbers go
to `<output_dir>/metrics.json`.
"""),
        parameters("""
data_root = None  # folder holding Task_A/ and Task_B/; None: FACECOM in the repository, else the synthetic demo
output_dir = None  # where metrics.json is written; None: reports/default/01_eda
property_sample = 200  # images measured per (task, split, class or distortion); None measures all
hash_kind = "phash"  # perceptual hash: "phash" or "dhash"
hash_size = 16  # hash grid side: 16 -> 256 bits
max_hash_distance = 16  # pairs differing in at most this many bits are near-duplicates
review_hash_distance = 40  # different people up to this distance are listed as look-alikes
include_distorted = False  # also hash Task B's distorted copies (slower)
grid_faces = 3  # faces in the distortion grid
seed = 0
"""),
        code("""
import matplotlib.pyplot as plt
from IPython.display import display

from facecom_utils import eda, notebook

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "01_eda")
config = eda.EDAConfig(
    data_root=str(data_root),
    output_dir=str(output_dir),
    property_sample=property_sample,
    hash_kind=hash_kind,
    hash_size=hash_size,
    max_hash_distance=max_hash_distance,
    review_hash_distance=review_hash_distance,
    include_distorted=include_distorted,
    seed=seed,
)
notebook.data_banner(data_root)
"""),
        md("""
## 1. What is on disk
Images per split and label (Task A) and per split and distortion type (Task B).
"""),
        code("""
task_a, task_b = eda.load_tables(config.data_root)
counts_a = eda.task_a_counts(task_a)
counts_b = eda.task_b_counts(task_b)
"""),
        code(f"""
{CHECK}
print("Task A: images per split and label")
print(counts_a.to_string())
print()
print("Task B: identities and images per split and distortion type")
print(counts_b.T.to_string())
"""),
        md("""
## 2. Class imbalance (Task A)
The positive class of the gender classifier is `female`, the minority: on FACECOM's training split
303 female against 1,623 male images, about 5.4 male per female. Accuracy alone would reward a model
that says "male" to everyone (≈ 84 %), which is why notebook 02 reports balanced accuracy and
female recall and chooses its threshold on a validation fold.
"""),
        code("""
eda.plot_class_balance(task_a)
plt.show()
"""),
        md("""
## 3. Images per identity (Task B)
Identities with two or more clean images are the ones that keep probes in the strict recognition protocol (notebook 03).
"""),
        code("""
per_identity = eda.images_per_identity(task_b)
display(per_identity.groupby(level="split").describe().T.round(2))
"""),
        code("""
eda.plot_images_per_identity(task_b)
plt.show()
"""),
        md("""
## 4. Image size, mode and pixel statistics per distortion type
Measured on a seeded sample of `property_sample` images per group; modes are as stored on disk (the loader converts everything to 8-bit RGB).
"""),
        code("""
properties = eda.image_properties(task_a, task_b, sample=config.property_sample, seed=config.seed)
display(eda.size_mode_table(properties))
"""),
        code("""
display(eda.property_summary(properties[properties["task"] == "B"]))
"""),
        code("""
eda.plot_property_distributions(properties)
plt.show()
"""),
        md("## 5. Each distortion beside its clean source"),
        code("""
eda.plot_distortion_grid(task_b, n_identities=grid_faces, seed=config.seed)
plt.show()
"""),
        md("""
## 6. Leakage check
Overlapping people or identities between train and val, people under both labels, and near-duplicate
images (perceptual hash) across the splits and between different people of one split. Look-alikes are
not counted: they are the closest pairs of *different* names, listed so a person can judge them.
"""),
        code("""
leakage = eda.leakage_report(
    task_a,
    task_b,
    hash_kind=config.hash_kind,
    hash_size=config.hash_size,
    max_distance=config.max_hash_distance,
    review_distance=config.review_hash_distance,
    include_distorted=config.include_distorted,
)
display(eda.leakage_table(leakage))
"""),
        code("""
display(eda.leakage_examples(leakage, n=5))
"""),
        code("""
eda.plot_image_pairs(leakage["cross_split_duplicates"], "Near-duplicate images across train and val")
plt.show()
"""),
        code("""
eda.plot_image_pairs(leakage["cross_identity_duplicates"], "Near-duplicates of different people in one split")
plt.show()
"""),
        code("""
eda.plot_image_pairs(leakage["look_alikes"], "Look-alikes of different people (not counted; check by eye)")
plt.show()
"""),
        md("""
## Summary
The counts and the leakage findings, as written to `metrics.json`.
"""),
        code("""
metrics = eda.eda_metrics(task_a, task_b, leakage, properties)
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=data_root)
notebook.metrics_table(metrics, keys=[
    "task_a_images", "task_b_images",
    "task_a_counts.train.female", "task_a_counts.train.male", "task_a_male_per_female.train",
    "task_b_counts.train.identities", "task_b_counts.train.clean", "task_b_counts.train.distorted",
    "leakage.task_a_person_overlap", "leakage.task_b_identity_overlap", "leakage.task_a_label_conflicts",
    "leakage.cross_split_duplicates", "leakage.cross_identity_duplicates", "leakage.look_alikes",
])
"""),
    ])


# --------------------------------------------------------------------------------------------------
# 02 Gender classification
# --------------------------------------------------------------------------------------------------


def gender_notebook() -> NotebookNode:
    return notebook([
        md("""
# 02 · Gender classification (Task A)

Trains a binary gender classifier (positive class **female**, the minority) on `Task_A/train` and
reports it on `Task_A/val`, with the plots a reviewer needs: training curves, confusion matrix, ROC and
precision–recall, reliability diagram, robustness per distortion type, and the worst errors.

**Protocol.** A validation fold is carved from `Task_A/train`: stratified by label, **grouped by
person** (the person comes from the file name, so nobody is on both sides) and seeded. That fold alone
drives early stopping, the choice of checkpoint and the **decision threshold** (maximising balanced
accuracy); the threshold is then applied **unchanged** to the reported split `Task_A/val` (when the data
root has no `val`, e.g. the FACECOM training split alone, an identity-disjoint part of `train` is held out
instead and the metrics say so). Metrics at the naive threshold 0.5 are shown beside. Calibration:
reliability curve, Brier score and ECE. Robustness: the same metrics after each of the seven FACECOM
distortions applied (seeded) to the reported images. Training: `facecom_utils.gender.train_gender`
(class-balanced sampling, FACECOM distortion augmentation, AdamW with cosine schedule, AMP on CUDA,
batch-norm statistics recomputed before evaluation). Everything lands in `<output_dir>/metrics.json`.
"""),
        config_parameters(GenderConfig, [
            "data_root = None  # folder holding Task_A/; None: FACECOM in the repository, else the synthetic demo",
            "output_dir = None  # checkpoints + metrics.json; None: reports/default/02_gender_classification",
        ], {
            "backbone": ("efficientnet_lite0", "timm name, or efficientnet-b0..b7 (efficientnet_pytorch, the reference)"),
            "pretrained": ("offline", "offline (bundled ImageNet Lite0 weights), imagenet (download), None, or a file"),
            "image_size": (64, "input side in pixels (FACECOM presets: 128-224)"),
            "epochs": (2, ""),
            "batch_size": (32, ""),
            "lr": (1e-3, ""),
            "seed": (0, ""),
            "device": ("auto", "auto, cpu, cuda or mps"),
            "distortion_augment": (0.3, "probability of an on-the-fly FACECOM distortion per training image"),
            "balance": ("sampler", "class balance: sampler (WeightedRandomSampler), pos_weight or none"),
            "threshold_criterion": ("balanced_accuracy", "what the fold threshold maximises"),
            "evaluate_distortions": (True, "robustness pass over the seven distortion types"),
            "max_train_images": (None, "subsample Task_A/train (whole persons) for quick runs"),
            "resume": (False, "continue from <output_dir>/checkpoints/last.pt"),
            "progress": (False, "tqdm progress bars"),
        }),
        code("""
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from facecom_utils import notebook, plots
from facecom_utils.gender import GenderConfig, train_gender

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "02_gender_classification")
config = notebook.build_config(GenderConfig, globals(), data_root=str(data_root), output_dir=str(output_dir))
notebook.data_banner(data_root)
"""),
        md("## 1. Training\nOne row per epoch; the fold metrics decide the checkpoint and the threshold."),
        code("""
run = train_gender(config)
display(run.history.round(4))
"""),
        code(f"""
{CHECK}
for key in ("report_split", "n_train_images", "n_val_fold_images", "n_report_images",
            "n_train_persons", "n_val_fold_persons", "n_report_persons"):
    print(f"{{key:18}} {{run.metrics[key]}}")
"""),
        code("""
plots.training_curves(run.history, title="Task A training curves (validation fold)",
                      metrics=["val_balanced_accuracy", "val_roc_auc", "val_recall_female"])
plt.show()
"""),
        md("## 2. Results on the reported split\nThe threshold was chosen on the validation fold; the naive 0.5 is shown beside it for comparison."),
        code("""
notebook.side_by_side(
    run.metrics,
    ["accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female"],
    {f"fold threshold {run.threshold:.3f}": ("", ""), "threshold 0.5": ("", "_at_0.5")},
)
"""),
        code("""
plots.confusion_matrix_plot(run.metrics["confusion_matrix"], ["male", "female"],
                            title=f"Confusion matrix on {run.report_split} (threshold {run.threshold:.3f})")
plt.show()
"""),
        code("""
y_true = (run.probabilities["label"] == "female").astype(int)
plots.roc_pr_curves(y_true, run.probabilities["prob"], threshold=run.threshold,
                    title=f"ROC and precision-recall on {run.report_split}", positive_name="female")
plt.show()
"""),
        md("## 3. Calibration"),
        code("""
plots.reliability_diagram(pd.DataFrame(run.metrics["reliability"]), ece=run.metrics["ece"],
                          title=f"Reliability of P(female) on {run.report_split} (Brier {run.metrics['brier']:.3f})")
plt.show()
"""),
        md("## 4. Robustness per distortion type\nBalanced accuracy after each FACECOM distortion (seeded) applied to the reported images, against the clean images (line)."),
        code("""
plots.per_distortion_bars(run.metrics.get("per_distortion", {}), metric="balanced_accuracy",
                          baseline=run.metrics["balanced_accuracy"], labels=("distorted", "clean"),
                          title="Task A balanced accuracy per distortion type")
plt.show()
"""),
        md("## 5. The most confident mistakes"),
        code("""
notebook.plot_worst_errors(run.probabilities, n=8)
plt.show()
"""),
        md("## Summary\nThe headline numbers, as written to `metrics.json` (with the parameters used)."),
        code("""
metrics = {k: v for k, v in run.metrics.items() if k not in ("params", "reliability")}
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=data_root)
notebook.metrics_table(metrics, keys=[
    "report_split", "accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female",
    "f1_female", "roc_auc", "average_precision", "brier", "threshold", "balanced_accuracy_at_0.5",
    "train_seconds", "train_images_per_second", "best_epoch",
])
"""),
    ])


# --------------------------------------------------------------------------------------------------
# 03 ArcFace recognition
# --------------------------------------------------------------------------------------------------


def recognition_notebook() -> NotebookNode:
    return notebook([
        md("""
# 03 · Face recognition under distortion (Task B): embedder + ArcFace

Trains a face embedder (timm backbone + Linear/BatchNorm neck, L2-normalised) with a margin head
(ArcFace by default; CosFace and AdaFace selectable) on the identities of `Task_B/train`, then evaluates
it on `Task_B/val` with the full protocol, in a main and a strict variant.

**Protocol.** An identity-disjoint validation **fold** is carved from `Task_B/train` (seeded, stratified
by clean-image count); it chooses the checkpoint and the match **threshold** (k-fold over balanced pairs),
which is then applied **unchanged** to the reported split. On the reported split, the **gallery** is every
clean image of the evaluated identities and the **probes** are every distorted image.
- Identification: top-1 and top-5, an identity's score being the max cosine over its gallery images.
- Verification over all probe × identity scores: ROC AUC, EER, TAR at FAR = 1e-2, 1e-3, 1e-4 (with the
  number of impostor scores, so you can see which FARs are reachable).
- Match decision (the hackathon's): a probe matches when its top-1 score clears the threshold; accuracy,
  precision, recall, F1 and macro F1 over **equal numbers of genuine and impostor pairs** (seeded), never
  genuine pairs alone.
- Each of the above per distortion type.
- **Strict variant** (keys prefixed `strict_`): the probe's own clean source image is removed from the
  gallery, so a probe can only be matched through *another* photo of the same person. In FACECOM every
  distorted image is a copy of a gallery image, so the main protocol is partly near-duplicate matching;
  the strict one measures face recognition itself. Probes of identities with a single clean image are
  left out of it and counted.

The oracle threshold (tuned on the reported split) is shown for reference only, labelled as such.
Everything lands in `<output_dir>/metrics.json`; embeddings are saved for notebook 04.

**Embeddings.** Each image is embedded at the training crop (`face_crop`), averaged with its mirror
(`flip_tta`); with `tta_crops` it is also embedded at those central crops and the views are concatenated,
so a cosine is the mean of the per-view cosines (the fold, the threshold and the report all use the same
views; the per-epoch model choice uses the training crop alone).
"""),
        config_parameters(RecognitionConfig, [
            "data_root = None  # folder holding Task_B/; None: FACECOM in the repository, else the synthetic demo",
            "output_dir = None  # checkpoints, embeddings, metrics.json; None: reports/default/03_arcface_recognition",
        ], {
            "backbone": ("efficientnet_lite0", "any timm name (reference: tf_efficientnetv2_s) or efficientnet-b0..b7"),
            "pretrained": ("offline", "offline (bundled ImageNet Lite0 weights), imagenet (download), None, or a file"),
            "image_size": (64, "input side in pixels (FACECOM presets: 112-224)"),
            "epochs": (2, ""),
            "batch_size": (32, ""),
            "lr": (2e-3, ""),
            "seed": (0, ""),
            "device": ("auto", "auto, cpu, cuda or mps"),
            "head": ("arcface", "arcface, cosface or adaface"),
            "embedding_dim": (512, ""),
            "margin": (None, "head margin m; None: the head default (ArcFace 0.5, CosFace 0.35, AdaFace 0.4)"),
            "scale": (None, "head scale s; None: the head default"),
            "label_smoothing": (0.1, ""),
            "distortion_augment": (0.3, "probability of an on-the-fly FACECOM distortion per clean training image"),
            "max_identities": (20, "keep this many training identities (seeded) for quick runs; None: all"),
            "samples_per_epoch": (256, "images drawn per epoch; None: the number of training images"),
            "flip_tta": (False, "average each embedding with that of the mirrored image (FACECOM presets: True)"),
            "tta_crops": ((), "extra central-crop views concatenated into the embeddings, e.g. [0.85]"),
            "distortion_weights": (None, "sampling weight per distortion type, e.g. {'sunny': 2.0}; None: alike"),
            "resume": (False, "continue from <output_dir>/checkpoints/last.pt"),
            "progress": (False, "tqdm progress bars"),
        }),
        code("""
import matplotlib.pyplot as plt
from IPython.display import display

from facecom_utils import notebook, plots, thresholds
from facecom_utils.recognition import RecognitionConfig, load_embeddings, train_recognition

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "03_arcface_recognition")
config = notebook.build_config(RecognitionConfig, globals(), data_root=str(data_root), output_dir=str(output_dir))
notebook.data_banner(data_root)
"""),
        md("## 1. Training\nOne row per epoch: the fold's main and strict top-1 choose the checkpoint."),
        code("""
run = train_recognition(config)
display(run.history.round(4))
"""),
        code(f"""
{CHECK}
for key in ("reported_split", "n_train_identities", "n_train_images", "n_fold_identities",
            "n_identities", "n_gallery", "n_probes", "strict_n_probes", "strict_n_excluded"):
    print(f"{{key:20}} {{run.metrics[key]}}")
"""),
        code("""
plots.training_curves(run.history, title="Task B training curves (validation fold)",
                      metrics=["val_top1", "val_strict_top1", "val_selection_score"])
plt.show()
"""),
        md("## 2. Results: main and strict protocol\nThreshold chosen on the validation fold and applied unchanged; the oracle threshold (tuned on this split) is for reference only."),
        code("""
notebook.side_by_side(
    run.metrics,
    ["top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4", "n_impostor",
     "match_accuracy", "match_precision", "match_recall", "match_f1", "match_f1_macro", "threshold",
     "oracle_threshold", "oracle_match_accuracy"],
    {"main": ("", ""), "strict (own source removed)": ("strict_", "")},
)
"""),
        code("""
plots.per_distortion_bars(run.metrics["per_distortion"], metric="top1",
                          baseline=run.metrics["strict_per_distortion"], labels=("main", "strict"),
                          title="Task B top-1 per distortion type")
plt.show()
"""),
        md("## 3. Genuine vs impostor scores on the reported split\n(Notebook 04 analyses the threshold in depth.)"),
        code("""
analysis = thresholds.score_analysis(*load_embeddings(run.output_dir, run.metrics["reported_split"]))
genuine, impostor = analysis.genuine_impostor()
plots.similarity_histograms(genuine, impostor, threshold=run.threshold,
                            title=f"Genuine vs impostor identity scores ({run.metrics['reported_split']}, main protocol)")
plt.show()
"""),
        md("## Summary\nThe headline numbers, as written to `metrics.json` (with the parameters used)."),
        code("""
metrics = {k: v for k, v in run.metrics.items() if k not in ("params",)}
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=data_root)
notebook.metrics_table(metrics, keys=[
    "reported_split", "top1", "top5", "strict_top1", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3",
    "match_accuracy", "match_f1_macro", "threshold", "strict_threshold", "train_seconds",
    "embed_images_per_second", "best_epoch",
])
"""),
    ])


# --------------------------------------------------------------------------------------------------
# 04 Threshold analysis
# --------------------------------------------------------------------------------------------------


def threshold_notebook() -> NotebookNode:
    return notebook([
        md("""
# 04 · Threshold analysis of a recognition run

Takes the output folder of a notebook-03 run (`run_dir`: its `metrics.json` and saved embeddings) and
looks at the match threshold from every side: genuine vs impostor cosine histograms, overall and per
distortion type; ROC and DET curves; precision, recall and F1 against the threshold; how the threshold
chosen by k-fold cross-validation moves across folds; the hardest false matches and misses as image pairs;
and a recommended operating threshold with the false accept rate it implies.

**Protocol.** The same as notebook 03: gallery = every clean image of the evaluated identities, probes =
every distorted image; identity score = max cosine over the identity's gallery images; genuine scores =
each probe against its own identity, impostor scores = each probe against every other identity. The
**recommended threshold is decided on the validation fold only** (by default the k-fold threshold of
notebook 03; with `target_far` set, the lowest fold threshold whose FAR stays under it) and then
evaluated, unchanged, on the reported split. FAR values below 1 / (number of impostor scores) cannot be
resolved and are reported as such. The main protocol and the strict variant (the probe's own clean
source removed from the gallery) are analysed side by side. Results go to `<output_dir>/metrics.json`.
"""),
        parameters("""
run_dir = None  # output_dir of a notebook-03 run; None: reports/default/03_arcface_recognition
output_dir = None  # where metrics.json is written; None: reports/default/04_threshold_analysis
target_far = None  # None: the fold threshold of notebook 03; e.g. 1e-3: the lowest fold threshold with FAR at most 1e-3
n_examples = 6  # image pairs shown per kind of error
seed = 0  # seed of the balanced impostor-pair draw
"""),
        code("""
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from facecom_utils import notebook, plots, thresholds

run_dir = run_dir or notebook.default_output_dir("03_arcface_recognition")
output_dir = notebook.resolve_output_dir(output_dir, "04_threshold_analysis")
config = thresholds.ThresholdConfig(run_dir=str(run_dir), output_dir=str(output_dir), target_far=target_far,
                                    n_examples=n_examples, seed=seed)
run = thresholds.load_recognition_run(config.run_dir)
notebook.data_banner(run.data_root)
"""),
        code("""
report = thresholds.score_analysis(*run.report)
strict_report = thresholds.score_analysis(*run.report, strict=True)
fold = thresholds.score_analysis(*run.fold)
strict_fold = thresholds.score_analysis(*run.fold, strict=True)
recommendation = thresholds.recommend_threshold(fold, run.threshold, config.target_far)
strict_recommendation = thresholds.recommend_threshold(strict_fold, run.strict_threshold, config.target_far)
"""),
        code(f"""
{CHECK}
print(f"reported split: {{run.reported_split}}")
for name, a in (("main", report), ("strict", strict_report), ("fold", fold)):
    g, i = a.genuine_impostor()
    print(f"{{name:7}} probes {{len(a.probes):5d}}  identities {{len(a.identities):4d}}  genuine {{len(g):6d}}  impostor {{len(i):8d}}")
"""),
        md("## 1. Genuine vs impostor scores\nDashed line: the recommended threshold (decided on the validation fold)."),
        code("""
genuine, impostor = report.genuine_impostor()
plots.similarity_histograms(genuine, impostor, threshold=recommendation["threshold"],
                            title=f"Genuine vs impostor identity scores on {run.reported_split} (main protocol)")
plt.show()
"""),
        code("""
thresholds.plot_histograms_per_distortion(report, recommendation["threshold"])
plt.show()
"""),
        code("""
strict_genuine, strict_impostor = strict_report.genuine_impostor()
plots.similarity_histograms(strict_genuine, strict_impostor, threshold=strict_recommendation["threshold"],
                            title=f"Genuine vs impostor scores on {run.reported_split} (strict: own source removed)")
plt.show()
"""),
        md("## 2. ROC and DET curves"),
        code("""
labels = [1] * len(genuine) + [0] * len(impostor)
plots.roc_pr_curves(labels, list(genuine) + list(impostor), threshold=recommendation["threshold"],
                    title=f"Verification ROC and precision-recall on {run.reported_split} (all probe x identity scores)",
                    positive_name="genuine")
plt.show()
"""),
        code("""
plots.det_curve(genuine, impostor, title=f"DET curve on {run.reported_split} (main protocol)")
plt.show()
"""),
        md("## 3. Precision, recall and F1 against the threshold\nOver balanced genuine/impostor pairs, as in the match protocol."),
        code("""
plots.threshold_sweep(genuine, impostor, threshold=recommendation["threshold"],
                      title=f"Match metrics vs threshold on {run.reported_split}")
plt.show()
"""),
        md("## 4. How the threshold moves across folds\nNotebook 03 chose its threshold by k-fold cross-validation on the validation fold: each point is the threshold chosen on k-1 folds, with the accuracy it reached on the held-out fold."),
        code("""
thresholds.plot_fold_thresholds(run.metrics)
plt.show()
"""),
        md("## 5. The hardest mistakes at the recommended threshold\nFalse matches: the highest-scoring wrong identities that clear the threshold. Misses: the lowest-scoring true identities that fall below it."),
        code("""
false_matches = thresholds.hardest_errors(report, recommendation["threshold"], "false_match", config.n_examples)
thresholds.plot_error_pairs(false_matches, "Hardest false matches (probe | closest image of the wrong identity)")
plt.show()
"""),
        code("""
misses = thresholds.hardest_errors(report, recommendation["threshold"], "miss", config.n_examples)
thresholds.plot_error_pairs(misses, "Hardest misses (probe | closest image of its own identity)")
plt.show()
"""),
        md("## 6. Recommended operating threshold\nDecided on the validation fold, evaluated unchanged on the reported split, overall and per distortion type."),
        code("""
pd.DataFrame({"main": recommendation, "strict": strict_recommendation})
"""),
        code("""
display(thresholds.per_distortion_operating_points(report, recommendation["threshold"]).round(4))
display(thresholds.per_distortion_operating_points(strict_report, strict_recommendation["threshold"]).round(4))
"""),
        md("## Summary\nAs written to `metrics.json` (with the parameters used)."),
        code("""
metrics = thresholds.threshold_metrics(run, report, strict_report, recommendation, strict_recommendation, seed=config.seed)
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=run.data_root)
notebook.metrics_table(metrics, keys=[
    "reported_split", "recommended_threshold", "far_at_recommended", "tar_at_recommended", "n_impostor",
    "min_resolvable_far", "match_accuracy", "match_f1_macro", "oracle_threshold", "threshold_fold_mean",
    "threshold_fold_std", "strict_recommended_threshold", "strict_far_at_recommended", "strict_tar_at_recommended",
])
"""),
    ])


# --------------------------------------------------------------------------------------------------
# Writing, executing, keeping checked outputs
# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, tuple[str, Callable[[], NotebookNode]]] = {
    "01": ("01_eda", eda_notebook),
    "02": ("02_gender_classification", gender_notebook),
    "03": ("03_arcface_recognition", recognition_notebook),
    "04": ("04_threshold_analysis", threshold_notebook),
}


def _is_checked(cell: NotebookNode) -> bool:
    return cell.cell_type == "code" and CHECK in cell.source


def _keep_checked_outputs(new: NotebookNode, old_path: Path) -> None:
    """Copy stored outputs of checked cells whose source is unchanged from the committed notebook."""
    if not old_path.is_file():
        return
    old = nbformat.read(old_path, as_version=4)
    stored = {c.source: c.outputs for c in old.cells if _is_checked(c) and c.get("outputs")}
    for cell in new.cells:
        if _is_checked(cell) and cell.source in stored:
            cell.outputs = stored[cell.source]


def _execute_checked_outputs(nb: NotebookNode) -> None:
    """Run the notebook with its defaults and store the outputs of the checked cells only."""
    from nbclient import NotebookClient

    from facecom_utils.run import KERNEL_ENV, CurrentEnvKernelManager, _environment

    executed = nbformat.from_dict(nb)
    client = NotebookClient(
        executed,
        kernel_name="python3",
        kernel_manager_class=CurrentEnvKernelManager,
        timeout=1800,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    with _environment(KERNEL_ENV):
        client.execute()
    for cell, ran in zip(nb.cells, executed.cells):
        if _is_checked(cell):
            outputs = [o for o in ran.outputs if not (o.output_type == "stream" and o.name == "stderr")]
            if len(outputs) != len(ran.outputs):
                raise RuntimeError(f"a checked cell wrote to stderr; nbval would compare it:\n{cell.source}")
            cell.outputs = outputs


def _clean(nb: NotebookNode) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            # nbval only compares cells that were run (an execution count); the others carry nothing
            cell.execution_count = 1 if _is_checked(cell) and cell.outputs else None
            if not _is_checked(cell):
                cell.outputs = []
            else:
                for output in cell.outputs:
                    if output.output_type == "execute_result":
                        output.execution_count = 1
        cell.pop("id", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run with defaults and store the checked outputs")
    parser.add_argument("--only", default=None, help="comma-separated notebook ids, e.g. 01,02")
    args = parser.parse_args(argv)
    ids = args.only.split(",") if args.only else list(BUILDERS)
    for nid in ids:
        stem, build = BUILDERS[nid]
        path = NOTEBOOK_DIR / f"{stem}.ipynb"
        nb = build()
        if args.execute:
            _execute_checked_outputs(nb)
        else:
            _keep_checked_outputs(nb, path)
        _clean(nb)
        nb = nbformat.v4.upgrade(nb)
        # stable cell ids, so regenerating an unchanged notebook gives an identical file
        for k, cell in enumerate(nb.cells):
            cell["id"] = f"{stem[:2]}-{k:02d}"
        nbformat.validate(nb)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
