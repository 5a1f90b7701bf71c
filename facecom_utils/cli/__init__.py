"""The ``facecom`` command: ``commands`` (the entry point and the parser), one module per group of
subcommands (``gender_commands``, ``recognition_commands``, ``data_commands`` with ``check_data``),
what they share (``options``, ``inputs``, ``outputs``, ``runs``), and ``train-*`` under torchrun (``launch``)."""
