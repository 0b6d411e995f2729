"""Progress of long command-line work: a tqdm bar that stays on the terminal when there is one,
else a line every few seconds (a log file gets records, not carriage-return updates), and a
closing summary."""

from __future__ import annotations

import sys
import time
from typing import IO

#: Seconds between progress lines when the output is not a terminal.
LINE_EVERY_S = 10.0


def plural(unit: str, n: int) -> str:
    """``unit`` for a count of ``n`` (study -> studies, image -> images)."""
    if n == 1:
        return unit
    return unit[:-1] + "ies" if unit.endswith("y") else unit + "s"


class Progress:
    """Counts done and failed items of ``total``; use as a context manager, call :meth:`update`."""

    def __init__(self, total: int, desc: str, unit: str = "study", stream: IO[str] | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done = self.failed = 0
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar = None
        if self._is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=True)

    def _is_terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= LINE_EVERY_S or self.done == self.total:
            self._last_line = now
            print(
                f"{self.desc}: {self.done}/{self.total} {plural(self.unit, self.total)}",
                file=self.stream,
                flush=True,
            )

    def summary(self) -> str:
        seconds = max(time.monotonic() - self._started, 1e-9)
        return (
            f"{self.desc}: {self.done} {plural(self.unit, self.done)}, "
            f"{self.failed} failed, {seconds:.1f} s ({self.done / seconds:.1f} {self.unit}/s)"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        print(self.summary(), file=self.stream, flush=True)
