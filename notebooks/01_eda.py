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
# # 01 · Exploratory data analysis of FACECOM
#
# What is in the folders before anything is trained: how many images per split, class, identity and
# distortion type; how imbalanced Task A is; the images' sizes and modes; how each distortion changes
# brightness, contrast and sharpness; what the distortions look like beside their clean source; and
# whether anything **leaks** between the training and the validation split.
#
# **Protocol.** The folders are read as published (`Task_A/{train,val}/{female,male}/`,
# `Task_B/{train,val}/<identity>/` with distorted copies in `<identity>/distortion/`) by
# `facecom_utils.data.layout`; nothing is modified. Pixel statistics are measured as in
# `docs/FACECOM_DISTORTIONS.md` on a seeded sample per group (`property_sample`). The leakage check
# looks for (1) people/identities present in both splits (Task A people from file names,
# `First_Last_0001.jpg` → `First_Last`), (2) people filed under both labels, and (3) near-duplicate
# images with a 256-bit perceptual hash (pHash, 2-D DCT of a 64×64 grey thumbnail): across the two
# splits, and between *different* people of the same split (one person under two names defeats an
# identity-disjoint fold). On FACECOM a clean image and its resized or blurred copy differ by ≤ 8 bits and
# two random different people by ≥ 52; pairs within `max_hash_distance` count as near-duplicates, pairs of
# different people up to `review_hash_distance` are listed as look-alikes to check by eye. All numbers go
# to `<output_dir>/metrics.json`.

# %% tags=["parameters"]
from typing import Optional

data_root: Optional[str] = None  # folder holding Task_A/ and Task_B/; None: FACECOM in the repository, else the synthetic demo
output_dir: Optional[str] = None  # where metrics.json is written; None: reports/default/01_eda
property_sample: Optional[int] = 200  # images measured per (task, split, class or distortion); None measures all
hash_kind: str = "phash"  # perceptual hash: "phash" or "dhash"
hash_size: int = 16  # hash grid side: 16 -> 256 bits
max_hash_distance: int = 16  # pairs differing in at most this many bits are near-duplicates
review_hash_distance: int = 40  # different people up to this distance are listed as look-alikes
include_distorted: bool = False  # also hash Task B's distorted copies (slower)
grid_faces: int = 3  # faces in the distortion grid (a display setting, not part of EDAConfig)
seed: int = 0  # seed of every sample drawn
dataset_images: bool = True  # draw dataset images (sample grids, pairs, error galleries); False for a report to publish

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import display

from facecom_utils.reporting import eda
from facecom_utils.reporting import notebook
from facecom_utils.reporting import plots

data_root, output_dir = notebook.notebook_paths(data_root, output_dir, "01_eda")
plots.show_dataset_images(dataset_images)
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

# %% [markdown]
# ## 1. What is on disk
# Images per split and label (Task A) and per split and distortion type (Task B).

# %%
task_a, task_b = eda.load_tables(config.data_root)
counts_a = eda.task_a_counts(task_a)
counts_b = eda.task_b_counts(task_b)

# %%
# NBVAL_CHECK_OUTPUT
print("Task A: images per split and label")
print(counts_a.to_string())
print()
print("Task B: identities and images per split and distortion type")
print(counts_b.T.to_string())

# %% [markdown]
# ## 2. Class imbalance (Task A)
# The positive class of the gender classifier is `female`, the minority: on FACECOM's training split
# 303 female against 1,623 male images, about 5.4 male per female. Accuracy alone would reward a model
# that says "male" to everyone (≈ 84 %), which is why notebook 02 reports balanced accuracy and
# female recall and chooses its threshold on a validation fold.

# %%
eda.plot_class_balance(task_a)
plt.show()

# %% [markdown]
# ## 3. Images per identity (Task B)
# Identities with two or more clean images are the ones that keep probes in the strict recognition protocol (notebook 03).

# %%
per_identity = eda.images_per_identity(task_b)
display(per_identity.groupby(level="split").describe().T.round(2))

# %%
eda.plot_images_per_identity(task_b)
plt.show()

# %% [markdown]
# ## 4. Image size, mode and pixel statistics per distortion type
# Measured on a seeded sample of `property_sample` images per group; modes are as stored on disk (the loader converts everything to 8-bit RGB).

# %%
properties = eda.image_properties(task_a, task_b, sample=config.property_sample, seed=config.seed)
display(eda.size_mode_table(properties))

# %%
display(eda.property_summary(properties[properties["task"] == "B"]))

# %%
eda.plot_property_distributions(properties)
plt.show()

# %% [markdown]
# ## 5. Each distortion beside its clean source

# %%
eda.plot_distortion_grid(task_b, n_identities=grid_faces, seed=config.seed)
plt.show()

# %% [markdown]
# ## 5b. Where the face front end finds a face
# dlib's HOG detector (upsample 1) on up to `property_sample` seeded images per type; where it finds none, the
# face-model tracks of notebooks 02 and 03 use a fallback box measured on FACECOM's clean training images.
# Restoration lifts the noisy and rainy rates (notebooks 02 and 03 restore before describing); glare (sunny)
# stays hard. On the synthetic demo's drawn faces the detector finds almost nothing.

# %%
display(eda.face_detection_rates(task_b, sample=config.property_sample, seed=config.seed).round(3))

# %% [markdown]
# ## 6. Leakage check
# Overlapping people or identities between train and val, people under both labels, and near-duplicate
# images (perceptual hash) across the splits and between different people of one split. Look-alikes are
# not counted: they are the closest pairs of *different* names, listed so a person can judge them.

# %%
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

# %%
display(eda.leakage_examples(leakage, n=5))

# %%
eda.plot_image_pairs(leakage["cross_split_duplicates"], "Near-duplicate images across train and val")
plt.show()

# %%
eda.plot_image_pairs(leakage["cross_identity_duplicates"], "Near-duplicates of different people in one split")
plt.show()

# %%
eda.plot_image_pairs(leakage["look_alikes"], "Look-alikes of different people (not counted; check by eye)")
plt.show()

# %% [markdown]
# ## Summary
# The counts and the leakage findings, as written to `metrics.json`.

# %%
metrics = eda.eda_metrics(task_a, task_b, leakage, properties)
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=data_root)
notebook.metrics_table(metrics, keys=[
    "task_a_images", "task_b_images",
    "task_a_counts.train.female", "task_a_counts.train.male", "task_a_male_per_female.train",
    "task_b_counts.train.identities", "task_b_counts.train.clean", "task_b_counts.train.distorted",
    "leakage.task_a_person_overlap", "leakage.task_b_identity_overlap", "leakage.task_a_label_conflicts",
    "leakage.cross_split_duplicates", "leakage.cross_identity_duplicates", "leakage.look_alikes",
])
