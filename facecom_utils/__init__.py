"""facecom_utils: the tested library behind the FACECOM notebooks.

Data flows one way (see ../shared/docs/ARCHITECTURE.md)::

    data / distortions / demo -> datasets -> models + heads -> training
        -> evaluation + verification -> plots -> gender / recognition -> notebook
        -> eda / thresholds / run / cli / bench

Import the module you need (``from facecom_utils.data import scan_task_b``); importing the package
itself is cheap and does not import torch.
"""

__version__ = "0.1.0"
