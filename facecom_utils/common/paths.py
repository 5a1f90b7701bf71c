"""Where things are: the one repository root every other path is resolved against.

``REPO_ROOT`` is the checkout that holds ``facecom_utils/`` (an editable install, as the README's
commands make). The user's FACECOM folders (``Task_A/``, ``Task_B/``), the synthetic demo
(``data/demo_synthetic``), the presets (``params/``) and the reports (``reports/``) sit under it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "DEMO_ROOT", "PARAMS_DIR", "REPORTS_DIR", "NOTEBOOKS_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "data" / "demo_synthetic"
PARAMS_DIR = REPO_ROOT / "params"
REPORTS_DIR = REPO_ROOT / "reports"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
