"""What the ``facecom`` commands write: metric tables and JSON, prediction CSVs, the skipped-images summary.

Files are written atomically (a temporary file renamed into place), after every input was checked, so
a command that fails leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facecom_utils.cli.inputs import EXIT_SKIPPED

__all__ = ["PREDICTION_FIELDS", "emit_metrics", "error_row", "finish", "metrics_text", "write_atomic", "write_rows"]

#: The columns of ``predict-gender`` and ``identify`` (``path, prediction`` first in every prediction CSV).
PREDICTION_FIELDS = ("path", "prediction", "score", "decision", "error")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder (no partial file on failure)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, newline="")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def metrics_text(metrics: dict[str, Any]) -> str:
    """Scalars as an aligned two-column table, then per-distortion values as one table."""
    scalars = {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}
    width = max((len(k) for k in scalars), default=0)
    lines = [f"{key:<{width}}  {_number(value)}" for key, value in scalars.items()]
    for key in ("per_distortion", "strict_per_distortion"):
        per = metrics.get(key)
        if isinstance(per, dict) and per:
            lines += ["", key]
            lines += [f"  {kind:<{max(len(k) for k in per)}}  {_number(value)}" for kind, value in per.items()]
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        lines += ["", f"confusion_matrix  {cm}"]
    return "\n".join(lines)


def emit_metrics(metrics: dict[str, Any], as_json: bool, out: str | None) -> None:
    """Print the metrics (table or JSON) and write them as JSON to ``out`` when given."""
    from facecom_utils.train.rundir import to_jsonable

    plain = to_jsonable(metrics)
    if out:
        write_atomic(out, json.dumps(plain, indent=2) + "\n")
    print(json.dumps(plain, indent=2) if as_json else metrics_text(plain))


def error_row(path: str | Path, reason: str) -> dict[str, str]:
    """The CSV row of a skipped image: the reason in ``error``, the prediction columns empty."""
    return {"path": str(path), "prediction": "", "score": "", "decision": "", "error": reason}


def write_rows(rows: list[dict[str, Any]], out: str | None, fields: Sequence[str] = PREDICTION_FIELDS) -> None:
    """Write CSV rows to ``out`` (atomically) or to stdout."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    if out:
        target = write_atomic(out, buffer.getvalue())
        print(f"wrote {len(rows)} rows to {target}", file=sys.stderr)
    else:
        sys.stdout.write(buffer.getvalue())


def finish(args: argparse.Namespace, n_skipped: int, n_total: int, detail: str = "") -> int:
    """Exit code of a batch command: 0, or EXIT_SKIPPED after a one-line summary of what was skipped."""
    if not n_skipped:
        return 0
    print(f"facecom {args.command}: {n_skipped} of {n_total} images skipped (unreadable{detail})", file=sys.stderr)
    return EXIT_SKIPPED
