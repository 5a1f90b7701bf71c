"""``python -m facecom_utils``: the ``facecom`` command."""

import sys

from facecom_utils.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
