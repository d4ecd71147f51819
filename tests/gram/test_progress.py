"""The Gram progress line: redrawn on a timer, one ETA (fake clock and stream, no sleeping)."""

import io
import time

from ntkscale.gram.progress import LOG_EVERY, Progress, eta_seconds


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_is_redrawn_on_the_timer_between_blocks():
    clock, out = Clock(), io.StringIO()
    bar = Progress(4, 0, 400, stream=out, clock=clock, timer=False)
    assert bar.every == LOG_EVERY            # a pipe or log file: a new line every 15 s
    bar.update({"entries": 100})             # first block at t=0: drawn
    assert out.getvalue().count("\n") == 1
    clock.t += 5
    bar.tick()                               # 5 s: too early for a log line
    assert out.getvalue().count("\n") == 1
    clock.t += LOG_EVERY
    bar.tick()                               # no block finished, but time passed: redrawn
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "blocks 1/4 (25%)" in lines[1] and "elapsed 0:00:20" in lines[1]
    # the ETA moves with time: 100 entries in 20 s -> 300 left take 60 s
    assert "ETA 0:01:00" in lines[1]
    bar.close()
    assert not bar.tick()                    # closed: the timer stops


def test_terminal_redraws_in_place_every_second():
    clock, out = Clock(), Tty()
    bar = Progress(2, 0, 200, stream=out, clock=clock, timer=False)
    assert bar.tty and bar.every == 1.0
    bar.tick()                               # nothing done yet: drawn, ETA unknown
    clock.t += 0.5
    bar.tick()                               # within the second: not redrawn
    clock.t += 0.6
    bar.tick()
    text = out.getvalue()
    assert text.count("\r") == 2 * 2 and "\n" not in text and "ETA ?" in text
    bar.update({"entries": 100})
    bar.update({"entries": 100})             # last block: the line ends
    assert out.getvalue().endswith("ETA 0:00:00\n")


def test_timer_thread_redraws_without_blocks_finishing():
    out = io.StringIO()
    bar = Progress(3, 0, 300, stream=out, every=0.05)
    deadline = time.monotonic() + 2.0
    while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    bar.close()
    n = out.getvalue().count("\n")
    assert n >= 3, out.getvalue()
    time.sleep(0.15)                         # closed: the thread drew nothing more
    assert out.getvalue().count("\n") == n


def test_one_eta_computation():
    assert eta_seconds(100, 400, 20.0) == 60.0
    assert eta_seconds(0, 400, 20.0) != eta_seconds(0, 400, 20.0)   # NaN before the first entry
