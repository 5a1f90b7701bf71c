"""The face front end: detection and 5-point alignment, classical restorations, the distortion estimator,
dlib's face network in PyTorch, its descriptors, and the pixel copy detector (outside face knowledge)."""
