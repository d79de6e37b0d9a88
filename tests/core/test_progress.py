"""What a person watching a long command sees when stderr is not a terminal: one plain line per finished item."""

from __future__ import annotations

import time

import pytest

from resgrad.progress import Progress, duration


def test_durations_read_as_a_person_reads_them() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 3600, 7620)] == [
        "0 s",
        "42 s",
        "3 min 05 s",
        "1 h 00 min",
        "2 h 07 min",
    ]


def test_one_line_per_finished_item_with_elapsed_time_and_what_is_left(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(4, "sweep", "run", None, initial=1) as shown:  # stderr is captured here: not a terminal
        assert shown.mode == "lines"
        shown.start = time.perf_counter() - 60  # this session's first run took a minute
        shown.done("plain-d8: complete")
        shown.done("residual-d8: diverged")
        shown.done("residual-d14: complete")
    first, second, last = capsys.readouterr().err.splitlines()
    # 1 done in 60 s, 2 left at that rate: about 2 min
    assert first.startswith("sweep: 2 of 4 runs done (plain-d8: complete), 1 min 00 s elapsed, about 2 min 0")
    assert second.startswith("sweep: 3 of 4 runs done (residual-d8: diverged), 1 min 00 s elapsed, about 30 s left")
    assert last.startswith("sweep: 4 of 4 runs done (residual-d14: complete), 1 min 0") and "left" not in last


def test_quiet_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(2, "lesion", "run", False) as shown:
        shown.done("a")
        shown.done("b")
    assert capsys.readouterr().err == ""
