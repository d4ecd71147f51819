"""Progress of a Gram run: the status line, and plain one-line messages.

:class:`Progress` draws blocks done, rate and ETA; :func:`say` prints one
message line. Every stage prints through ``say`` so messages look the same
and go to the same stream.

The line is redrawn on a timer (every second on a terminal, every
:data:`LOG_EVERY` seconds into a log file), not only when a block finishes, so
elapsed time and ETA move while long blocks compute. There is one ETA: the
measured one of this line (entries left over this run's entries per second).
``ntkscale plan``'s figure is a *plan estimate* from a one-core calibration and
is printed under that name.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, Optional, TextIO

from ..store.maintenance import eta_seconds

__all__ = ["LOG_EVERY", "TTY_EVERY", "Progress", "eta_seconds", "say"]

#: Seconds between redraws on a terminal (in place) and into a pipe or log file (new lines).
TTY_EVERY, LOG_EVERY = 1.0, 15.0


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """Print ``message`` as one line to ``stream`` (default: stderr) and flush."""
    print(message, file=stream or sys.stderr, flush=True)


class Progress:
    """One status line: blocks done, rate, ETA. Redrawn in place on a terminal
    every ``every`` seconds (default :data:`TTY_EVERY`), otherwise printed as a new
    line every ``every`` seconds (default :data:`LOG_EVERY`); with ``timer`` a
    daemon thread redraws it between finished blocks.

    Hand-written because progress counts the blocks already in the store and
    weighs blocks by their size (diagonal segments are nearly free); Dask's
    ``progress`` bar knows only this run's tasks. ``clock`` (seconds, monotonic)
    and ``stream`` can be injected (tests).
    """

    def __init__(self, total: int, done_before: int, entries_todo: int, stream: Optional[TextIO] = None,
                 every: Optional[float] = None, enabled: bool = True, *, timer: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done = total, done_before
        self.entries_todo, self.entries_done = max(1, entries_todo), 0
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = float(every if every is not None else TTY_EVERY if self.tty else LOG_EVERY)
        self.clock = clock
        self.t0 = clock()
        self._last = -math.inf
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.failed = 0     # blocks of this run that failed: never counted as done
        if enabled and timer and self.every > 0:
            _start_timer(self)

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        frac = self.entries_done / self.entries_todo
        rate = self.entries_done / elapsed if elapsed > 0 else 0.0
        eta = eta_seconds(self.entries_done, self.entries_todo, elapsed)
        # floor, not round: 99.6 % done is not "100%" (and failed blocks are never done)
        pct = math.floor(100.0 * self.done / max(1, self.total))
        failed = f"  {self.failed} FAILED" if self.failed else ""
        return (f"blocks {self.done}/{self.total} ({pct:.0f}%){failed}  {rate:.3g} entries/s  "
                f"elapsed {_hms(elapsed)}  ETA {_hms(eta) if 0.01 <= frac < 1 else '0:00:00' if frac >= 1 else '?'}")

    def _draw(self, final: bool) -> None:
        self._last = self.clock()
        end = "\r" if self.tty and not final else "\n"
        print(("\r" if self.tty else "") + self.line(), end=end, file=self.stream, flush=True)

    def update(self, record: Optional[Dict[str, Any]]) -> None:
        """One block finished (``record``) or failed (``None``)."""
        with self._lock:
            if record:
                self.done += 1
                self.entries_done += int(record.get("entries", 0))
            else:
                self.failed += 1
            if not self.enabled or self._closed.is_set():
                return
            last = self.done + self.failed >= self.total
            # a terminal shows every finished block (at most 5 redraws a second)
            wait = min(self.every, 0.2) if self.tty else self.every
            if self.clock() - self._last >= wait or last:
                self._draw(final=last)
            if last:
                self._closed.set()

    def tick(self) -> bool:
        """Redraw if ``every`` seconds passed since the last draw (the timer calls this);
        returns False once the line is closed."""
        with self._lock:
            if self._closed.is_set():
                return False
            if self.enabled and self.clock() - self._last >= self.every:
                self._draw(final=False)
            return True

    def close(self) -> None:
        """End the status line; a run that stopped early prints where it stopped."""
        with self._lock:
            was_closed = self._closed.is_set()
            self._closed.set()
            if self.enabled and not was_closed and self.done + self.failed < self.total:
                self._draw(final=True)


def _start_timer(progress: Progress) -> None:
    """A daemon thread calling ``progress.tick()``; it holds only a weak reference,
    so a line dropped without ``close()`` (an exception) stops being drawn."""
    ref, closed, every = weakref.ref(progress), progress._closed, progress.every

    def loop() -> None:
        while not closed.wait(min(every, 1.0)):
            bar = ref()
            if bar is None or not bar.tick():
                return
            del bar

    threading.Thread(target=loop, name="ntkscale-progress", daemon=True).start()


def _hms(seconds: float) -> str:
    if math.isnan(seconds) or math.isinf(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
