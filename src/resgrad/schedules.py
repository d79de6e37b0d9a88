"""When the recorder records: schedules are callables ``step -> bool``."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable

import numpy as np

from resgrad.errors import UsageError

Schedule = Callable[[int], bool]


def every(k: int) -> Schedule:
    """Record at steps 0, k, 2k, ..."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise UsageError(f"record every k steps needs a whole number k >= 1, got {k!r}.")
    return lambda step: step % k == 0


def log_spaced(total_steps: int, num: int = 50) -> Schedule:
    """Record at about ``num`` steps spread evenly on a log scale over ``[0, total_steps)``."""
    if total_steps < 1 or num < 1:
        raise UsageError(f"a log-spaced schedule needs total_steps >= 1 and num >= 1, got {total_steps}, {num}.")
    steps = {0} | {int(round(s)) for s in np.geomspace(1, max(total_steps - 1, 1), num)}
    return steps.__contains__


def as_schedule(schedule: int | Schedule | Iterable[int]) -> Schedule:
    """A schedule from a whole number k (every k steps), an iterable of steps or a callable ``step -> bool``."""
    if isinstance(schedule, numbers.Integral) and not isinstance(schedule, bool):
        return every(schedule)  # type: ignore[arg-type]
    if callable(schedule):
        return schedule
    if isinstance(schedule, Iterable) and not isinstance(schedule, (str, bytes)):
        steps = list(schedule)
        bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0]
        if not bad:
            return frozenset(int(s) for s in steps).__contains__
        raise UsageError(f"a schedule's steps must be whole numbers >= 0, got {bad[0]!r}.")
    raise UsageError(
        f"schedule must be a whole number k >= 1 (every k steps), an iterable of steps or a "
        f"callable step -> bool, got {schedule!r}."
    )
