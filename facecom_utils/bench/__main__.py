"""``python -m facecom_utils.bench``: run the speed benchmarks and print JSON."""

import sys

from facecom_utils.bench.speed import main

if __name__ == "__main__":
    sys.exit(main())
