"""Task A, gender classification: the pipeline (FACECOM-only CNN), the face-model tracks, the glare expert."""
