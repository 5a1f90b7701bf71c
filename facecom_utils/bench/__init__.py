"""Speed benchmarks (``python -m facecom_utils.bench``): side-by-side ratios, never absolute timings."""
