"""The ``facecom`` command (``commands``) and ``train-*`` under torchrun (``launch``)."""
