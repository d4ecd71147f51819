"""Progress of a Gram run: the status line, and plain one-line messages.

:class:`Progress` draws blocks done, rate and ETA; :func:`say` prints one
message line. Every stage prints through ``say`` so messages look the same
and go to the same stream.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Dict, Optional, TextIO


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """Print ``message`` as one line to ``stream`` (default: stderr) and flush."""
    print(message, file=stream or sys.stderr, flush=True)


class Progress:
    """One status line: blocks done, rate, ETA. Redrawn in place on a terminal,
    otherwise printed every ``every`` seconds.

    Hand-written because progress counts the blocks already in the store and
    weighs blocks by their size (diagonal segments are nearly free); Dask's
    ``progress`` bar knows only this run's tasks.
    """

    def __init__(self, total: int, done_before: int, entries_todo: int, stream: Optional[TextIO] = None,
                 every: float = 10.0, enabled: bool = True):
        self.total, self.done = total, done_before
        self.entries_todo, self.entries_done = max(1, entries_todo), 0
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.2 if self.tty else every
        self.t0 = time.monotonic()
        self._last = -1e9
        self.failed = 0     # blocks of this run that failed: never counted as done

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        frac = self.entries_done / self.entries_todo
        rate = self.entries_done / elapsed if elapsed > 0 else 0.0
        eta = (self.entries_todo - self.entries_done) / rate if rate > 0 else float("nan")
        # floor, not round: 99.6 % done is not "100%" (and failed blocks are never done)
        pct = math.floor(100.0 * self.done / max(1, self.total))
        failed = f"  {self.failed} FAILED" if self.failed else ""
        return (f"blocks {self.done}/{self.total} ({pct:.0f}%){failed}  {rate:.3g} entries/s  "
                f"elapsed {_hms(elapsed)}  ETA {_hms(eta) if 0.01 <= frac < 1 else '0:00:00' if frac >= 1 else '?'}")

    def update(self, record: Optional[Dict[str, Any]]) -> None:
        """One block finished (``record``) or failed (``None``)."""
        if record:
            self.done += 1
            self.entries_done += int(record.get("entries", 0))
        else:
            self.failed += 1
        if not self.enabled:
            return
        t = time.monotonic()
        last = self.done + self.failed >= self.total
        if t - self._last >= self.every or last:
            self._last = t
            end = "\r" if self.tty and not last else "\n"
            print(("\r" if self.tty else "") + self.line(), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        """End the status line; a run that stopped early prints where it stopped."""
        if not self.enabled:
            return
        if self.done + self.failed < self.total:
            print(("\r" if self.tty else "") + self.line(), file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    if math.isnan(seconds) or math.isinf(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
