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
# # 02 · Gender classification (Task A)
#
# Trains a binary gender classifier (positive class **female**, the minority) on `Task_A/train` and
# reports it on `Task_A/val`, with the plots a reviewer needs: training curves, confusion matrix, ROC and
# precision–recall, reliability diagram, robustness per distortion type, and the worst errors.
#
# **Protocol.** A validation fold is carved from `Task_A/train`: stratified by label, **grouped by
# person** (the person comes from the file name, so nobody is on both sides) and seeded. That fold alone
# drives early stopping, the choice of checkpoint and the **decision threshold** (maximising balanced
# accuracy); the threshold is then applied **unchanged** to the reported split `Task_A/val` (when the data
# root has no `val`, e.g. the FACECOM training split alone, an identity-disjoint part of `train` is held out
# instead and the metrics say so). Metrics at the naive threshold 0.5 are shown beside. Calibration:
# reliability curve, Brier score and ECE. Robustness: the same metrics after each of the seven FACECOM
# distortions applied (seeded) to the reported images. The run is shown stage by stage, one cell each, with
# the stages of `facecom_utils.gender.pipeline` (`train_gender` runs the same four in one call, for the CLI and
# torchrun): the splits (`gender_splits`), the data pipeline (`gender_pipeline`: class-balanced sampling,
# FACECOM distortion augmentation), training (`fit_gender`: AdamW with cosine schedule, AMP on CUDA,
# batch-norm statistics recomputed before evaluation) and the fold threshold with the report
# (`report_gender`). Everything lands in `<output_dir>/metrics.json`.

# %% tags=["parameters"]
from typing import Optional, Union

# data and outputs
data_root: Optional[str] = None  # folder holding Task_A/; None: FACECOM in the repository, else the synthetic demo
output_dir: Optional[str] = None  # checkpoints + metrics.json; None: reports/default/02_gender_classification
report_split: str = "val"  # the split that is reported (never used for any choice)
max_train_images: Optional[int] = None  # subsample Task_A/train (whole persons) for quick runs; None: all
# model
backbone: str = "efficientnet_lite0"  # timm name, or efficientnet-b0..b7 (efficientnet_pytorch, the reference)
pretrained: Optional[str] = "offline"  # offline (bundled ImageNet Lite0 weights), imagenet (download), None, or a file
image_size: int = 64  # input side in pixels (FACECOM presets: 128-224)
dropout: float = 0.2  # dropout before the classifier
# training
epochs: int = 2  # maximum epochs
batch_size: int = 32  # training batch size
lr: float = 0.001  # peak learning rate of the classifier head
backbone_lr_scale: float = 0.5  # the backbone's learning rate is lr times this
weight_decay: float = 0.01  # weight decay of the optimizer
optimizer: str = "adamw"  # adamw, adam or sgd
warmup_epochs: float = 1.0  # linear warm-up length in epochs
min_lr_ratio: float = 0.01  # final learning rate of the cosine schedule, as a share of the peak
label_smoothing: float = 0.0  # targets move towards 0.5 by this much (FACECOM has noisy labels)
balance: str = "sampler"  # class balance: sampler (WeightedRandomSampler), pos_weight or none
distortion_augment: float = 0.3  # probability of an on-the-fly FACECOM distortion per training image
patience: Optional[int] = 4  # early-stopping patience in epochs; None: never stop early
max_train_minutes: Optional[float] = None  # time budget: no epoch starts that would end past it; None: no budget
seed: int = 0  # seed of the fold, the sampler, the augmentation and the initialisation
# validation fold, threshold, evaluation
val_fraction: float = 0.15  # share of the training persons carved out as the validation fold
holdout_fraction: float = 0.2  # without a report_split folder, this share of training persons is held out and reported
monitor: str = "roc_auc"  # fold metric that chooses the checkpoint (roc_auc is threshold-free, steadier on a small fold)
threshold_criterion: str = "balanced_accuracy"  # what the fold threshold maximises
bn_recalibrate: Union[bool, str] = "auto"  # recompute batch-norm statistics before evaluation; auto: when training from scratch
tta: bool = True  # average the logits of the image and its mirror image at prediction time
evaluate_distortions: bool = True  # robustness pass over the seven distortion types
eval_batch_size: int = 64  # batch size for prediction
# face-trained knowledge (dlib's descriptor: outside face data, reported as its own tracks)
face_model: Union[bool, str] = "auto"  # add the face-model tracks: True, False, or auto (when dlib is installed)
face_copies: Optional[int] = 2  # real distorted copies per training image (Task_B) besides its sunny one; None: all 7
face_cv_folds: int = 5  # person-grouped folds of the face tracks' CV and out-of-fold thresholds
face_cv_repeats: int = 1  # repeats of that CV (0: no CV estimate)
face_glare_cnn: bool = False  # fused track: glare images go to a CNN fine-tuned on real sunny copies (not a frozen-feature head)
face_glare_cnn_size: int = 128  # its input side
face_glare_cnn_epochs: int = 6  # its epochs per network
face_glare_cnn_members: int = 1  # its networks, cross-fitted on person-grouped parts when 2 or more (1: threshold on a held-out fifth)
face_mirror: bool = False  # the face head reads dlib's mirrored descriptor (a chip's and its mirror's, averaged)
face_workers: Optional[int] = None  # processes computing descriptors; None: up to 4, one per core
headline_track: str = "auto"  # track on top of metrics.json: auto (fused when the face tracks ran), facecom_only, face_model_restored, fused, stacked
# machine
device: str = "auto"  # auto, cpu, cuda or mps
amp: str = "auto"  # mixed precision: auto (float16 on CUDA), bf16 or none
num_workers: int = 0  # DataLoader worker processes
cache: str = "auto"  # decoded-image cache: auto (disk when writable, else memory), memory, disk or off (PIL per image)
cache_dir: Optional[str] = None  # folder of disk caches; None: $FACECOM_CACHE_DIR or ~/.cache/facecom
distortion_variants: int = 4  # with the cache, pre-rendered distortions per image; 0: distort on the fly
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

from facecom_utils.gender import pipeline as gender
from facecom_utils.gender import tracks as gender_face
from facecom_utils.reporting import notebook
from facecom_utils.reporting import plots
from facecom_utils.gender.pipeline import GenderConfig

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "02_gender_classification")
plots.show_dataset_images(dataset_images)
config = notebook.build_config(GenderConfig, globals(), data_root=str(data_root), output_dir=str(output_dir))
notebook.data_banner(data_root)

# %% [markdown]
# ## 1. Splits
# The training part, the validation fold carved from `Task_A/train` (it alone chooses the checkpoint and the
# threshold) and the reported split; grouped by person, so nobody is in two of them.

# %%
splits = gender.gender_splits(config)
display(splits.table())

# %% [markdown]
# ## 2. Data pipeline
# The first draws of the training stream as the model sees them: class-balanced, with FACECOM distortions,
# cropped, flipped, colour-jittered and normalised (with the cache, images are decoded once and each batch is
# augmented on the device; without it, per image in the loader).

# %%
pipeline = gender.gender_pipeline(config, splits)
images, labels = pipeline.augmented_batch(16)
plots.tensor_grid(images, labels, title=f"Augmented training images (cache: {pipeline.cache_mode})")
plt.show()

# %% [markdown]
# Class balance: each training image's draw weight and the share of female draws it gives per batch (with
# `balance="sampler"`, half; otherwise the class's own share, and `pos_weight` weighs the loss instead).

# %%
display(pipeline.sampler_table().round(4))

# %% [markdown]
# ## 3. Training
# The fold metrics after each epoch (the threshold is re-chosen on the fold every epoch).

# %%
fitted = gender.fit_gender(config, pipeline)
plots.training_curves(fitted.history, title="Task A training curves (validation fold)",
                      metrics=["val_balanced_accuracy", "val_roc_auc", "val_recall_female"])
plt.show()

# %% [markdown]
# ## 4. Threshold and report
# The best epoch (by the fold's `monitor`) gives the checkpoint and its fold threshold, stored in `best.pt` and
# applied unchanged to the reported split; `metrics.json` is written. `gender.train_gender(config)` runs these
# same four stages in one call (the command line and torchrun use it). One row per epoch:

# %%
run = gender.report_gender(config, pipeline, fitted)
display(run.history.round(4))

# %%
# NBVAL_CHECK_OUTPUT
for key in ("report_split", "n_train_images", "n_val_fold_images", "n_report_images",
            "n_train_persons", "n_val_fold_persons", "n_report_persons"):
    print(f"{key:18} {run.metrics[key]}")

# %% [markdown]
# ## 5. Results on the reported split
# The threshold was chosen on the validation fold; the naive 0.5 is shown beside it for comparison.

# %%
notebook.side_by_side(
    run.metrics,
    ["accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female"],
    {f"fold threshold {run.threshold:.3f}": ("", ""), "threshold 0.5": ("", "_at_0.5")},
)

# %%
plots.confusion_matrix_plot(run.metrics["confusion_matrix"], ["male", "female"],
                            title=f"Confusion matrix on {run.report_split} (threshold {run.threshold:.3f})")
plt.show()

# %%
y_true = (run.probabilities["label"] == "female").astype(int)
plots.roc_pr_curves(y_true, run.probabilities["prob"], threshold=run.threshold,
                    title=f"ROC and precision-recall on {run.report_split}", positive_name="female")
plt.show()

# %% [markdown]
# ## 6. Calibration

# %%
plots.reliability_diagram(pd.DataFrame(run.metrics["reliability"]), ece=run.metrics["ece"],
                          title=f"Reliability of P(female) on {run.report_split} (Brier {run.metrics['brier']:.3f})")
plt.show()

# %% [markdown]
# ## 7. Robustness per distortion type
# Balanced accuracy after each FACECOM distortion (seeded) applied to the reported images, against the clean images (line).

# %%
plots.per_distortion_bars(run.metrics.get("per_distortion", {}), metric="balanced_accuracy",
                          baseline=run.metrics["balanced_accuracy"], labels=("distorted", "clean"),
                          title="Task A balanced accuracy per distortion type")
plt.show()

# %% [markdown]
# ## 8. The most confident mistakes

# %%
notebook.plot_worst_errors(run.probabilities, n=8)
plt.show()

# %% [markdown]
# ## 9. Face-trained knowledge: tracks beside the FACECOM-only CNN
# **Outside face data.** dlib's 128-d face descriptor (`face-recognition-models`) was trained by its author on
# about 3 million faces of ~7,500 people from public face datasets; its named identities look like LFW's, and
# FACECOM's named people may be among them. Results that use it are therefore reported as their **own tracks**,
# beside the FACECOM-only CNN above:
#
# - `facecom_only`: the CNN of sections 1-8 (threshold from its validation fold);
# - `face_model_restored`: a per-image **restoration selector** (a distortion estimator on ~30 pixel statistics,
#   fitted on the training images and their types; at prediction it reads pixels only, never a file name)
#   picks denoise / de-rain / dehaze / low-light gain or nothing; dlib's front end detects the face, places
#   5 landmarks and aligns it (fallback box when none is found); a class-balanced logistic regression on the
#   descriptor, trained on the clean training images and up to `face_copies` of their **real** distorted copies;
# - `fused`: the same, except that images the selector calls *sunny* (glare wipes out the face the descriptor
#   reads) are routed to a glare expert that reads what remains (hair, outline): with `face_glare_cnn` a
#   Lite0 CNN fine-tuned on the training persons' real sunny copies (FACECOM data and ImageNet weights only;
#   with `face_glare_cnn_members` = k >= 2, k networks cross-fitted on person-grouped parts of those persons,
#   P(female) their mean and the threshold from their out-of-fold predictions over every one of them; with 1,
#   one network and a threshold from a held-out fifth), otherwise a logistic regression on frozen whole-frame
#   ImageNet features;
# - `stacked`: both networks on every image: a logistic regression over the CNN's logit, the face head's logit,
#   the selector's probability of each image type and each logit times each type probability, fitted on the
#   persons of the CNN's validation fold (the CNN never trained on them) with their real copies; the face head
#   and the selector that describe those rows are refitted on the other training persons, so every input is out
#   of sample; its threshold is out of fold over those persons. Glare images keep the glare expert's decision.
#
# Both face thresholds are chosen on **out-of-fold** probabilities over all training persons (every person
# predicted by a head that never saw them), never on the reported split. Robustness is measured on FACECOM's
# real distorted copies (Task B's `distortion/` folders: same person, same label) for every track.

# %%
tracks = gender_face.run_gender_tracks(config, splits, run)

# %% [markdown]
# **Estimate on unseen people.** Repeated person-grouped K-fold CV of the training persons; in each fold the
# selector, the heads and their thresholds are fitted on the fold's training part only. Mean, SD and
# mean - 1 SD (the bar counts as met when mean - 1 SD clears it). The fine-tuned glare CNN is not refitted per
# fold here (too slow on a CPU): `fused_glare_head` routes glare to the frozen-feature head instead, and the
# shipped `fused` track's estimate comes from `experiments/cv_notebooks.py --notebook 02` (README).

# %%
if tracks is not None and len(tracks.cv):
    display(tracks.cv_summary().round(3))

# %% [markdown]
# **The threshold that travels**: out-of-fold over all training images, with a person-bootstrap 95% interval of
# the balanced accuracy and female recall it gives; and the selector on the reported split (share of images
# whose type it estimated right, and whose restoration it chose right, per type). With `face_glare_cnn`, the glare
# CNN's fit: its threshold comes from out-of-fold predictions of its cross-fitted members over every training
# person with sunny copies (or, with one network, from a held-out fifth of them); the balanced accuracy shown
# there is at that same threshold (optimistic), the ROC AUC is threshold-free, and with several members both
# describe single members' out-of-fold predictions (the ensemble applies the threshold to their mean).

# %%
if tracks is not None:
    display(pd.DataFrame({"threshold": [tracks.model.face.threshold],
                          "oof balanced accuracy": [tracks.model.oof["oof"]["balanced_accuracy"]],
                          "95% interval": [tracks.model.oof["balanced_accuracy_ci"]],
                          "oof female recall": [tracks.model.oof["oof"]["recall_female"]],
                          "95% interval ": [tracks.model.oof["recall_female_ci"]]}).round(3))
    if "glare_cnn" in tracks.model.oof:
        display(pd.Series(tracks.model.oof["glare_cnn"], name="glare CNN (fitted on the sunny copies)").to_frame())
    if tracks.stacker is not None:
        display(pd.Series(tracks.stacker.info, name="stacker (fitted on the CNN's validation-fold persons)").to_frame())
    display(tracks.selector.round(3))

# %% [markdown]
# **All tracks on the reported split**: clean images (threshold as stated) and each real distortion type.

# %%
if tracks is not None:
    display(tracks.side_by_side().round(3))
    plots.track_bars({name: m["per_distortion"] for name, m in tracks.tracks.items()}, bar=0.80,
                     title=f"Task A balanced accuracy on real distorted copies ({run.report_split})")
    plt.show()

# %% [markdown]
# ## Summary
# The headline numbers, as the run wrote them to `<output_dir>/metrics.json` (with the parameters used and the
# data it ran on): the headline track (`headline_track`) on top, every track under `tracks.<name>`.

# %%
notebook.metrics_table(run.metrics, keys=[
    "headline_track", "report_split", "accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female",
    "f1_female", "roc_auc", "average_precision", "brier", "threshold", "balanced_accuracy_at_0.5",
    "train_seconds", "train_images_per_second", "best_epoch",
])
