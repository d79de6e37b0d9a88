"""What a person watching a long command sees: a tqdm bar on a terminal, plain lines in a log.

Every command that works through a list (sweep: runs; lesion: runs; shatter: nets; bench:
points) takes ``progress``: ``None`` (the default) shows a bar when stderr is a terminal and
otherwise one line per finished item with the time elapsed and an estimate of what is left
(``make``, CI, ``nohup``, a pipe: a bar's carriage returns would be noise there); ``True`` a
bar; ``False`` nothing (``--quiet``).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(progress: bool | None) -> bool:
    """A progress bar shows when asked, or by default when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: as a person reads a duration."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Progress through ``total`` items, ``initial`` of them done before (a resumed sweep).

    Use as a context manager; call :meth:`done` once per finished item. ``mode`` is ``bar``,
    ``lines`` or ``off`` (see the module's docstring).
    """

    def __init__(self, total: int, desc: str, unit: str, progress: bool | None, initial: int = 0) -> None:
        if progress is None:
            self.mode = "bar" if sys.stderr.isatty() else "lines"
        else:
            self.mode = "bar" if progress else "off"
        self.total, self.initial, self.desc, self.unit = total, initial, desc, unit
        self.finished = 0  # in this session
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit) if self.mode == "bar" else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def line(self, what: str = "") -> str:
        """The line for the item just finished: counts, ``what``, elapsed time and an estimate of the rest."""
        elapsed = time.perf_counter() - self.start
        count = self.initial + self.finished
        left = self.total - count
        text = f"{self.desc}: {count} of {self.total} {self.unit}s done"
        if what:
            text += f" ({what})"
        text += f", {duration(elapsed)} elapsed"
        if left > 0:  # the rate of this session's items: parallel workers included, earlier ones not
            text += f", about {duration(elapsed / self.finished * left)} left"
        return text

    def done(self, what: str = "", **postfix: Any) -> None:
        """One more item finished: ``what`` names it (lines), ``postfix`` goes beside the bar."""
        self.finished += 1
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update()
        elif self.mode == "lines":
            tqdm.write(self.line(what), file=sys.stderr)
