"""facecom_utils.common.progress: a line at most every interval, with a count, the elapsed time and an ETA."""

from __future__ import annotations

import io

from facecom_utils.common.progress import PREFIX, ProgressLog, format_seconds, is_progress_line, steps


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_a_minute_with_count_elapsed_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    log = ProgressLog(10, "face descriptors", every_s=60, stream=out, clock=clock)
    for _ in range(3):  # within the first minute: quiet
        clock.now += 10
        log.update()
    assert out.getvalue() == ""
    clock.now = 61
    log.update(detail="part 1")
    clock.now = 80  # 19 s later: still quiet
    log.update()
    assert out.getvalue().splitlines() == [f"{PREFIX}face descriptors: 4/10 (40%) [part 1], elapsed 1m01s, ETA 1m32s"]
    clock.now = 125
    log.update(2)
    assert out.getvalue().splitlines()[-1].startswith(f"{PREFIX}face descriptors: 7/10 (70%) [part 1], elapsed 2m05s")
    log.close()
    assert out.getvalue().splitlines()[-1] == f"{PREFIX}face descriptors: done, 7 in 2m05s"
    log.close()  # once
    assert len(out.getvalue().splitlines()) == 3


def test_short_stages_disabled_logs_and_unknown_totals() -> None:
    clock, out = Clock(), io.StringIO()
    with ProgressLog(5, "quick", stream=out, clock=clock) as log:
        log.update(5)
    assert out.getvalue() == ""  # nothing printed, so no closing line either
    quiet = ProgressLog(5, "rank 1", every_s=0, enabled=False, stream=out, clock=clock)
    quiet.update()
    quiet.close()
    assert out.getvalue() == ""
    stream = ProgressLog(None, "batches", every_s=0, stream=out, clock=clock)
    stream.update(3)
    assert out.getvalue() == f"{PREFIX}batches: 3, elapsed 0s\n"


def test_helpers() -> None:
    assert [format_seconds(s) for s in (0.4, 45, 245, 3725)] == ["0s", "45s", "4m05s", "1h02m"]
    assert is_progress_line(f"{PREFIX}x: 1/2") and not is_progress_line("x: 1/2")
    assert steps([1, 2, 3], 2) == 6 and steps(iter([1]), 2) is None
