"""How far a long `queuescaler simulate` or `recommend` got, on stderr.

On a terminal (or with `--progress`) one bar redrawn in place, at most ten times a second,
and wiped when the run ends, so that the tables on stdout start on a clean line; elsewhere
(a pipe, a CI log) one line per step, never a carriage return.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from queuescaler.sim.replay import Progress

__all__ = ["Bar", "Progress"]

WIDTH = 24
"""Characters of the bar itself."""
REDRAW_EVERY = 0.1
"""Seconds between two drawings of the same step."""


class Bar:
    """A `sim.replay.Progress` that draws on `stream`."""

    def __init__(
        self, stream: TextIO, *, bar: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.bar = bar
        self.clock = clock
        self.began = clock()
        self._step: str | None = None
        self._drawn_at = -REDRAW_EVERY
        self._width = 0

    def __call__(self, step: str, done: float) -> None:
        if not self.bar:
            if step != self._step:
                self.stream.write(f"... {step}\n")
                self.stream.flush()
            self._step = step
            return
        now = self.clock()
        if step == self._step and done < 1.0 and now - self._drawn_at < REDRAW_EVERY:
            return
        self._step, self._drawn_at = step, now
        self._draw(line(step, done, now - self.began))

    def close(self) -> None:
        """Wipe the bar (a terminal's line is left as it was before the run)."""
        if self.bar and self._width:
            self._draw("")
            self.stream.write("\r")
            self.stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)


def line(step: str, done: float, elapsed: float) -> str:
    """`[#########---------------]  38%  12 s  replaying queuescaler (1/3)`."""
    done = min(1.0, max(0.0, done))
    full = round(done * WIDTH)
    return f"[{'#' * full}{'-' * (WIDTH - full)}] {done:4.0%}  {elapsed:,.0f} s  {step}"
