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
# # 04 · Threshold analysis of a recognition run
#
# Takes the output folder of a notebook-03 run (`run_dir`: its `metrics.json` and saved embeddings) and
# looks at the match threshold from every side: genuine vs impostor score histograms, overall and per
# distortion type; ROC and DET curves; precision, recall and F1 against the threshold; how the threshold
# chosen by k-fold cross-validation moves across folds; the hardest false matches and misses as image pairs;
# and a recommended operating threshold with the false accept rate it implies. It analyses one of the run's
# tracks (`track`): by default the **headline** (`headline_track` in notebook 03's metrics.json: `fused` when
# dlib is installed, whose scores are calibrated per estimated type, 0 = that type's 99.9th-percentile impostor
# on the validation fold), or `facecom_only` (the saved embeddings of the FACECOM-trained embedder alone), or
# any other track notebook 03 scored. Face-model tracks are rebuilt from the saved embeddings, `face_tracks.pt`
# and the descriptor caches; they use dlib's descriptor, trained on outside face data.
#
# **Protocol.** The same as notebook 03: gallery = every clean image of the evaluated identities, probes =
# every distorted image; identity score = max score over the identity's gallery images; genuine scores =
# each probe against its own identity, impostor scores = each probe against every other identity. The
# **recommended threshold is decided on the validation fold only** (by default the k-fold threshold of
# notebook 03; with `target_far` set, the lowest fold threshold whose FAR stays under it) and then
# evaluated, unchanged, on the reported split. FAR values below 1 / (number of impostor scores) cannot be
# resolved and are reported as such. The main protocol and the strict variant (the probe's own clean
# source removed from the gallery) are analysed side by side. Results go to `<output_dir>/metrics.json`.

# %% tags=["parameters"]
from typing import Optional

run_dir: Optional[str] = None  # output_dir of a notebook-03 run; None: reports/default/03_arcface_recognition
output_dir: Optional[str] = None  # where metrics.json is written; None: reports/default/04_threshold_analysis
target_far: Optional[float] = None  # None: the fold threshold of notebook 03; a FAR such as 1e-3: the lowest fold threshold under it
n_examples: int = 6  # image pairs shown per kind of error
seed: int = 0  # seed of the balanced impostor-pair draw
track: str = "headline"  # "headline" (the run's headline_track), "facecom_only", "fused", "face_model_restored", ...
dataset_images: bool = True  # draw dataset images (sample grids, pairs, error galleries); False for a report to publish

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from facecom_utils.reporting import notebook
from facecom_utils.reporting import plots
from facecom_utils.recognition import analysis as thresholds

run_dir = run_dir or notebook.default_output_dir("03_arcface_recognition")
output_dir = notebook.resolve_output_dir(output_dir, "04_threshold_analysis")
plots.show_dataset_images(dataset_images)
config = thresholds.ThresholdConfig(run_dir=str(run_dir), output_dir=str(output_dir), target_far=target_far,
                                    n_examples=n_examples, seed=seed, track=track)
run = thresholds.load_recognition_run(config.run_dir, config.track)
notebook.data_banner(run.data_root)
print(f"track analysed: {run.track} (scores: {run.score_name})")

# %%
report = thresholds.score_analysis(*run.report)
strict_report = thresholds.score_analysis(*run.report, strict=True)
fold = thresholds.score_analysis(*run.fold)
strict_fold = thresholds.score_analysis(*run.fold, strict=True)
recommendation = thresholds.recommend_threshold(fold, run.threshold, config.target_far)
strict_recommendation = thresholds.recommend_threshold(strict_fold, run.strict_threshold, config.target_far)

# %%
# NBVAL_CHECK_OUTPUT
print(f"reported split: {run.reported_split}")
for name, a in (("main", report), ("strict", strict_report), ("fold", fold)):
    g, i = a.genuine_impostor()
    print(f"{name:7} probes {len(a.probes):5d}  identities {len(a.identities):4d}  genuine {len(g):6d}  impostor {len(i):8d}")

# %% [markdown]
# ## 1. Genuine vs impostor scores
# Dashed line: the recommended threshold (decided on the validation fold).

# %%
genuine, impostor = report.genuine_impostor()
plots.similarity_histograms(genuine, impostor, threshold=recommendation["threshold"], xlabel=run.score_name,
                            title=f"Genuine vs impostor identity scores on {run.reported_split} (main protocol, {run.track})")
plt.show()

# %%
plots.plot_histograms_per_distortion(report, recommendation["threshold"], xlabel=run.score_name)
plt.show()

# %%
strict_genuine, strict_impostor = strict_report.genuine_impostor()
plots.similarity_histograms(strict_genuine, strict_impostor, threshold=strict_recommendation["threshold"],
                            xlabel=run.score_name,
                            title=f"Genuine vs impostor scores on {run.reported_split} (strict: own source removed, {run.track})")
plt.show()

# %% [markdown]
# ## 2. ROC and DET curves

# %%
labels = [1] * len(genuine) + [0] * len(impostor)
plots.roc_pr_curves(labels, list(genuine) + list(impostor), threshold=recommendation["threshold"],
                    title=f"Verification ROC and precision-recall on {run.reported_split} (all probe x identity scores)",
                    positive_name="genuine")
plt.show()

# %%
plots.det_curve(genuine, impostor, title=f"DET curve on {run.reported_split} (main protocol)")
plt.show()

# %% [markdown]
# ## 3. Precision, recall and F1 against the threshold
# Over balanced genuine/impostor pairs, as in the match protocol.

# %%
plots.threshold_sweep(genuine, impostor, threshold=recommendation["threshold"],
                      title=f"Match metrics vs threshold on {run.reported_split}")
plt.show()

# %% [markdown]
# ## 4. How the threshold moves across folds
# Notebook 03 chose its threshold by k-fold cross-validation on the validation fold: each point is the threshold chosen on k-1 folds, with the accuracy it reached on the held-out fold.

# %%
plots.plot_fold_thresholds(run)
plt.show()

# %% [markdown]
# ## 5. The hardest mistakes at the recommended threshold
# False matches: the highest-scoring wrong identities that clear the threshold. Misses: the lowest-scoring true identities that fall below it.

# %%
false_matches = thresholds.hardest_errors(report, recommendation["threshold"], "false_match", config.n_examples)
plots.plot_error_pairs(false_matches, "Hardest false matches (probe | closest image of the wrong identity)")
plt.show()

# %%
misses = thresholds.hardest_errors(report, recommendation["threshold"], "miss", config.n_examples)
plots.plot_error_pairs(misses, "Hardest misses (probe | closest image of its own identity)")
plt.show()

# %% [markdown]
# ## 6. Recommended operating threshold
# Decided on the validation fold, evaluated unchanged on the reported split, overall and per distortion type.

# %%
pd.DataFrame({"main": recommendation, "strict": strict_recommendation})

# %%
display(thresholds.per_distortion_operating_points(report, recommendation["threshold"]).round(4))
display(thresholds.per_distortion_operating_points(strict_report, strict_recommendation["threshold"]).round(4))

# %% [markdown]
# ## Summary
# As written to `metrics.json` (with the parameters used).

# %%
metrics = thresholds.threshold_metrics(run, report, strict_report, recommendation, strict_recommendation, seed=config.seed)
metrics_path = notebook.write_metrics(config.output_dir, metrics, config, data_root=run.data_root)
notebook.metrics_table(metrics, keys=[
    "reported_split", "recommended_threshold", "far_at_recommended", "tar_at_recommended", "n_impostor",
    "min_resolvable_far", "match_accuracy", "match_f1_macro", "oracle_threshold", "threshold_fold_mean",
    "threshold_fold_std", "strict_recommended_threshold", "strict_far_at_recommended", "strict_tar_at_recommended",
])
