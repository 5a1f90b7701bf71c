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


def test_lines_to_routes_logs_without_a_stream_and_restores_stdout(capsys) -> None:
    from facecom_utils.common.progress import lines_to

    clock, err = Clock(), io.StringIO()
    with lines_to(err):
        log = ProgressLog(2, "stage", every_s=1, clock=clock)
        clock.now = 5
        log.update()
    assert err.getvalue().startswith(f"{PREFIX}stage: 1/2") and capsys.readouterr().out == ""
    clock.now = 10
    log.update()  # outside the block: stdout again
    assert capsys.readouterr().out.startswith(f"{PREFIX}stage: 2/2")


def test_the_cli_keeps_progress_lines_off_stdout(monkeypatch, capsys) -> None:
    """A command's stdout is its data (CSV, --json): progress lines go to stderr."""
    from facecom_utils.cli import commands

    def fake(args) -> int:
        log = ProgressLog(1, "descriptors", every_s=0)
        log.update()
        print('{"top1": 1.0}')
        return 0

    parser = commands.build_parser()
    args = parser.parse_args(["make-demo", "unused"])
    monkeypatch.setattr(commands, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    monkeypatch.setattr(args, "func", fake, raising=False)
    assert commands.main(["make-demo", "unused"]) == 0
    out, err = capsys.readouterr()
    assert out == '{"top1": 1.0}\n' and err.startswith(f"{PREFIX}descriptors: 1/1")
