# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Face recognition under distortion (Task B): embedder + ArcFace
#
# Trains a face embedder (timm backbone + Linear/BatchNorm neck, L2-normalised) with a margin head
# (ArcFace by default; CosFace and AdaFace selectable) on the identities of `Task_B/train`, then evaluates
# it on `Task_B/val` with the full protocol, in a main and a strict variant.
#
# **Protocol.** An identity-disjoint validation **fold** is carved from `Task_B/train` (seeded, stratified
# by clean-image count); it chooses the checkpoint and the match **threshold** (k-fold over balanced pairs),
# which is then applied **unchanged** to the reported split. On the reported split, the **gallery** is every
# clean image of the evaluated identities and the **probes** are every distorted image.
# - Identification: top-1 and top-5, an identity's score being the max cosine over its gallery images.
# - Verification over all probe × identity scores: ROC AUC, EER, TAR at FAR = 1e-2, 1e-3, 1e-4 (with the
#   number of impostor scores, so you can see which FARs are reachable).
# - Match decision (the hackathon's): a probe matches when its top-1 score clears the threshold; accuracy,
#   precision, recall, F1 and macro F1 over **equal numbers of genuine and impostor pairs** (seeded), never
#   genuine pairs alone.
# - Each of the above per distortion type.
# - **Strict variant** (keys prefixed `strict_`): the probe's own clean source image is removed from the
#   gallery, so a probe can only be matched through *another* photo of the same person. In FACECOM every
#   distorted image is a copy of a gallery image, so the main protocol is partly near-duplicate matching;
#   the strict one measures face recognition itself. Probes of identities with a single clean image are
#   left out of it and counted.
#
# The oracle threshold (tuned on the reported split) is shown for reference only, labelled as such.
# Everything lands in `<output_dir>/metrics.json`; embeddings are saved for notebook 04.
#
# **Embeddings.** Each image is embedded at the training crop (`face_crop`), averaged with its mirror
# (`flip_tta`); with `tta_crops` it is also embedded at those central crops and the views are concatenated,
# so a cosine is the mean of the per-view cosines (the fold, the threshold and the report all use the same
# views; the per-epoch model choice uses the training crop alone).

# %% tags=["parameters"]
from typing import Optional, Union

# data and outputs
data_root: Optional[str] = None  # folder holding Task_B/; None: FACECOM in the repository, else the synthetic demo
output_dir: Optional[str] = None  # checkpoints, embeddings, metrics.json; None: reports/default/03_arcface_recognition
max_identities: Optional[int] = 20  # keep this many training identities (seeded) for quick runs; None: all
# model
backbone: str = "efficientnet_lite0"  # any timm name (reference: tf_efficientnetv2_s) or efficientnet-b0..b7
pretrained: Optional[str] = "offline"  # offline (bundled ImageNet Lite0 weights), imagenet (download), None, or a file
image_size: int = 64  # input side in pixels (FACECOM presets: 112-224)
face_crop: float = 1.0  # share of the image side kept by a central crop before resizing; 1.0: the whole image
head: str = "arcface"  # margin head: arcface, cosface or adaface
embedding_dim: int = 512  # size of the embedding (the neck's output)
margin: Optional[float] = None  # head margin m; None: the head default (ArcFace 0.5, CosFace 0.35, AdaFace 0.4)
scale: Optional[float] = None  # head scale s; None: the head default
# training
epochs: int = 2  # maximum number of epochs
samples_per_epoch: Optional[int] = 256  # images drawn per epoch; None: the number of training images
batch_size: int = 32  # training (and embedding) batch size
lr: float = 0.002  # peak learning rate of the neck and head
backbone_lr_scale: float = 0.3  # learning-rate multiplier of the pretrained backbone
weight_decay: float = 0.05  # AdamW weight decay
warmup_epochs: float = 1.0  # linear warm-up length in epochs (fractions allowed)
min_lr_ratio: float = 0.01  # final learning rate of the cosine schedule, as a share of the peak
label_smoothing: float = 0.1  # cross-entropy label smoothing
distortion_augment: float = 0.3  # probability of an on-the-fly FACECOM distortion per clean training image
crop_scale: tuple[float, float] = (0.6, 1.0)  # area range of the random resized crop
color_jitter: float = 0.3  # brightness, contrast and saturation jitter strength; 0 turns it off
clean_cap: Optional[int] = 8  # identity sampling weight is min(clean photos, clean_cap); None: uniform over images
clean_fraction: Optional[float] = 0.35  # share of each identity's draws on its clean photos; None: as the image counts
distortion_weights: Optional[dict[str, float]] = None  # sampling weight per distortion type, e.g. {"sunny": 2.0}; None: alike
patience: Optional[int] = 3  # early-stopping patience in epochs; None: never stop early
max_train_minutes: Optional[float] = None  # time budget: no epoch starts that would end past it; None: no budget
seed: int = 0  # seed of the fold, the sampler, augmentation and initialisation
# validation fold, embeddings, threshold
val_fraction: float = 0.15  # share of training identities held out as the validation fold
holdout_fraction: float = 0.2  # without Task_B/val, this share of training identities is held out and reported
embedding_source: str = "auto"  # neck (the embedding), pooled (backbone features) or auto (chosen on the fold)
flip_tta: bool = False  # average each embedding with that of the mirrored image (FACECOM presets: True)
tta_crops: list[float] = []  # extra central-crop views concatenated into the embeddings, e.g. [0.85]
threshold_method: str = "kfold"  # how the fold chooses the match threshold: kfold, accuracy or far
# face-trained knowledge (dlib's descriptor: outside face data, reported as its own tracks)
face_model: Union[bool, str] = "auto"  # add the face-model tracks: True, False, or auto (when dlib is installed)
face_workers: Optional[int] = None  # processes computing descriptors; None: up to 4, one per core
face_mirror: bool = True  # face-model tracks read dlib's mirrored descriptor (a chip's and its mirror's, averaged)
headline_track: str = "auto"  # track on top of metrics.json: auto (fused when the face tracks ran), facecom_only, face_model, face_model_restored, fused
# machine
device: str = "auto"  # auto, cpu, cuda or mps
amp: Union[str, bool] = "auto"  # mixed precision: auto (float16 on CUDA only), bf16 or none
num_workers: int = 0  # DataLoader worker processes
cache: str = "auto"  # decoded-image cache: auto (disk when writable, else memory), memory, disk or off (PIL per image)
cache_dir: Optional[str] = None  # folder of disk caches; None: $FACECOM_CACHE_DIR or ~/.cache/facecom
distortion_variants: int = 4  # with the cache, pre-rendered distortions per clean image; 0: distort on the fly
channels_last: bool = False  # channels-last memory format for the model and the batches
compile: bool = False  # torch.compile the model's forward
resume: bool = False  # continue from <output_dir>/checkpoints/last.pt when it exists
progress: bool = False  # tqdm progress bars (turn on in JupyterLab)
dataset_images: bool = True  # draw dataset images (sample grids, pairs, error galleries); False for a report to publish

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from facecom_utils.reporting import notebook
from facecom_utils.reporting import plots
from facecom_utils.recognition import analysis as thresholds
from facecom_utils import recognition as rec
from facecom_utils.recognition import face_tracks
from facecom_utils.recognition import RecognitionConfig, load_embeddings

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "03_arcface_recognition")
plots.show_dataset_images(dataset_images)
config = notebook.build_config(RecognitionConfig, globals(), data_root=str(data_root), output_dir=str(output_dir))
notebook.data_banner(data_root)

# %% [markdown]
# ## 1. Splits
# Identity-disjoint: the training identities, the validation fold that chooses the checkpoint and the
# threshold, and the reported split (`Task_B/val`, or identities held out of `Task_B/train` when there is none).
# These cells run the stages of `rec.train_recognition` (what `facecom train-recognition` runs) in the same order.

# %%
device = config.start_run()
splits = rec.recognition_splits(config)
display(splits.table())

# %% [markdown]
# ## 2. Model and data pipeline
# The embedder with its margin head; the sampler's expected share of draws per kind of image (identities in
# proportion to their clean photos, capped at `clean_cap`; `clean_fraction` of the draws on clean photos, which
# get on-the-fly distortions; `distortion_weights` among the real distorted ones).

# %%
model = rec.build_recognition_model(config, len(splits.train_identities))
pipeline = rec.recognition_pipeline(config, splits, device)
display(pipeline.draw_shares(splits.train).round(3))

# %% [markdown]
# A training batch as the model sees it (augmentation included), titled with the identity.

# %%
images, labels = pipeline.augmented_batch(16)
plots.tensor_grid(images, [splits.train_identities[int(i)][:14] for i in labels])
plt.show()

# %% [markdown]
# ## 3. Training
# One row per epoch: the fold's main and strict top-1 choose the checkpoint.

# %%
result = rec.fit_recognition(config, splits, pipeline, model, device)
display(result.history.round(4))

# %%
plots.training_curves(result.history, title="Task B training curves (validation fold)",
                      metrics=["val_top1", "val_strict_top1", "val_selection_score"])
plt.show()

# %% [markdown]
# ## 4. Threshold on the fold, protocol on the reported split
# Embeddings of the fold and the reported split (with the `tta_crops` views), the match thresholds chosen on
# the fold, the protocol on the reported split; everything written to `output_dir`.

# %%
run = rec.report_recognition(config, splits, model, result, device)

# %%
# NBVAL_CHECK_OUTPUT
for key in ("reported_split", "n_train_identities", "n_train_images", "n_fold_identities",
            "n_identities", "n_gallery", "n_probes", "strict_n_probes", "strict_n_excluded"):
    print(f"{key:20} {run.metrics[key]}")

# %% [markdown]
# ## 5. Results: main and strict protocol
# Threshold chosen on the validation fold and applied unchanged; the oracle threshold (tuned on this split) is for reference only.

# %%
notebook.side_by_side(
    run.metrics,
    ["top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4", "n_impostor",
     "match_accuracy", "match_precision", "match_recall", "match_f1", "match_f1_macro", "threshold",
     "oracle_threshold", "oracle_match_accuracy"],
    {"main": ("", ""), "strict (own source removed)": ("strict_", "")},
)

# %%
plots.per_distortion_bars(run.metrics["per_distortion"], metric="top1",
                          baseline=run.metrics["strict_per_distortion"], labels=("main", "strict"),
                          title="Task B top-1 per distortion type")
plt.show()

# %% [markdown]
# ## 6. Genuine vs impostor scores on the reported split
# (Notebook 04 analyses the threshold in depth.)

# %%
analysis = thresholds.score_analysis(*load_embeddings(run.output_dir, run.metrics["reported_role"]))
genuine, impostor = analysis.genuine_impostor()
plots.similarity_histograms(genuine, impostor, threshold=run.threshold,
                            title=f"Genuine vs impostor identity scores ({run.metrics['reported_split']}, main protocol)")
plt.show()

# %% [markdown]
# ## 7. Face-trained knowledge and copy evidence: five tracks, one protocol
# **Outside face data.** dlib's 128-d face descriptor (`face-recognition-models`) was trained by its author on
# about 3 million faces of ~7,500 people from public face datasets; its named identities look like LFW's, and
# FACECOM's named people may be among them. Its tracks are reported **apart** from the FACECOM-only one:
#
# - `facecom_only`: the embedder trained above;
# - `face_model`: dlib's descriptor of the face front end's aligned crop (HOG detector, 5 landmarks, the measured
#   fallback box when no face is found), mirrored by default (`face_mirror`: the mean of the crop's and its
#   mirror's unit descriptors);
# - `face_model_restored`: the same after the restoration a distortion estimator picks **from each image's
#   pixels** (fitted on the training images and their types; it never reads a file name): denoise, de-rain,
#   dehaze, low-light gain or nothing;
# - `pixel_copies`: a training-free pixel copy detector (no face data): the correlation of two images' 32 × 32
#   gradient thumbnails. Every FACECOM probe is a distorted copy of one clean photo; in the **main** protocol that
#   photo is in the gallery, so this track's near-perfect main top-1 and poor strict top-1 show what each protocol
#   measures: main = find the probe's own photo, strict = recognise the person in another photo;
# - `fused` (the headline): per probe, w · cos(face model, restored) + (1 − w) · cos(FACECOM embedder)
#   + γ · copy evidence, with one (w, γ) per *estimated* type, chosen on the validation fold (mean of main and
#   strict top-1) and applied unchanged here. Copy evidence is the copy correlation's excess over the probe's best
#   correlation with a cohort of the training people's clean photos (0 below a margin of 0.1, 1 from 0.2): about 1
#   for the probe's own photo, 0 for nearly all others, and never dependent on the rest of the gallery, so the
#   strict protocol (own photo removed) is scored as if that photo had never been enrolled.
#
#   Its score is then put on **one scale for every probe**: a probe of estimated type k scores
#   (s − h_k) / (h_k − m_k), where m_k and h_k are the median and the 99.9th percentile of that type's impostor
#   scores on the validation fold. The mixes differ by type (dlib's impostor cosines sit near 0.6, the FACECOM
#   embedder's near 0), so uncalibrated a glare probe's true match can score below a blurred probe's impostor,
#   and one threshold or one ROC over all probes compares unlike numbers. The map is affine per probe: every
#   top-1 stays exactly as it was; thresholds, ROC AUC and TAR@FAR change.
#
# Every track's thresholds come from the validation fold, as the FACECOM-only track's do.

# %%
tracks = face_tracks.run_recognition_tracks(config, splits, run)
if tracks is not None:
    display(tracks.fusion.table().rename_axis("chosen on the fold, per estimated type"))
    display(tracks.selector.round(3))

# %%
if tracks is not None:
    strict_scores = thresholds.score_analysis(tracks.table, tracks.embeddings[tracks.headline], strict=True)
    plots.similarity_histograms(*strict_scores.genuine_impostor(),
                                threshold=tracks.tracks[tracks.headline]["strict_threshold"],
                                title=f"{tracks.headline} track: genuine vs impostor identity scores "
                                      f"({run.metrics['reported_split']}, strict protocol)",
                                xlabel="fused score (per-type calibrated; 0 = the type's 99.9th-pct impostor)"
                                if tracks.headline == "fused" else "cosine similarity")
    plt.show()

# %%
if tracks is not None:
    display(tracks.side_by_side().round(3))
    for key, name in (("per_distortion", "main"), ("strict_per_distortion", "strict")):
        plots.track_bars({t: m[key] for t, m in tracks.tracks.items()}, metric="top-1",
                         title=f"Task B {name} top-1 per distortion type, every track ({run.metrics['reported_split']})")
        plt.show()

# %% [markdown]
# ### Error gallery
# The headline track's worst failures per type, main and strict: each probe beside the photo of the identity it
# was taken for and the best-scoring photo of its true identity (in the strict protocol the probe's own clean
# source is not in the gallery). Worst = the largest gap between the wrong and the true identity's score.

# %%
if tracks is not None:
    errors = tracks.failures(per_type=2)
    display(errors[["protocol", "type", "identity", "predicted", "score_wrong", "score_true", "margin"]].round(3))
    plots.failure_triplets(errors, title=f"Task B error gallery, {tracks.headline} track ({run.metrics['reported_split']})")
    plt.show()

# %% [markdown]
# ## Summary
# The headline numbers, as the run wrote them to `<output_dir>/metrics.json` (with the parameters used and the
# data it ran on): the headline track (`headline_track`) on top, every track under `tracks.<name>`.

# %%
notebook.metrics_table(run.metrics, keys=[
    "headline_track", "reported_split", "top1", "top5", "strict_top1", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3",
    "match_accuracy", "match_f1_macro", "threshold", "strict_threshold", "train_seconds",
    "embed_images_per_second", "best_epoch",
])
