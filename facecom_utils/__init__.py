"""facecom_utils: the tested library behind the FACECOM notebooks.

The folders are the architecture (docs/architecture.md); a folder imports only from those before it::

    common -> data -> face -> nn -> train -> metrics -> {gender, recognition} -> reporting -> {cli, bench}

Import the module you need (``from facecom_utils.data.layout import scan_task_b``); importing the package
itself is cheap and does not import torch.
"""

__version__ = "0.1.0"
