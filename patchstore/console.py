"""What the three console scripts share besides their errors: CPU threads, progress in logs, JSON.

``set_numba_threads(n)``      numba's threads here and in build workers started later
``throttled_stderr()``        a stderr that is a file or pipe (a log) gets a progress line every
                              30 s instead of ten carriage-return redraws a second:

    terminal:  "\\rvolumes 1/4 ...\\rvolumes 2/4 ..."   one line redrawn in place (unchanged)
    log file:  "volumes 0/4 ...\\n"                     the first state at once (a start line),
               "volumes 2/4 ...\\n"                     then the latest state every 30 s,
               "volumes 4/4 [01:10] ...\\n"             and each bar's final state (an end line);
               other text (warnings, results)          unchanged, in order

``json_text(data)``           JSON any parser reads: non-finite floats become null, never the
                              ``NaN`` / ``Infinity`` that Python's json writes by default

No click here: the console scripts call these; the libraries never do.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from patchstore.files import json_text  # noqa: F401  (the CLIs' JSON)

LOG_INTERVAL_S = 30.0
# A bar at position n > 0 moves down with "\n" * n, draws, and moves back up with ESC [ A.
_TOKENS = re.compile(r"(\r|\n|\x1b\[[0-9;]*[A-Za-z])")
_CURSOR_UP = re.compile(r"\x1b\[[0-9;]*A")


def set_numba_threads(n: int) -> int:
    """Use ``n`` numba threads in this process and in worker processes started later; return the
    number in use (at most the size of numba's thread pool when numba was loaded before)."""
    if n < 1:
        raise ValueError(f"threads is {n}; expected a number of threads >= 1")
    if "numba" not in sys.modules:
        # numba sizes its pool from this at import, here and in spawned build workers; once a pool
        # is running a different value is an error, so it is set only before numba loads
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    import numba
    used = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(used)
    return used


class ThrottledLog(io.TextIOBase):
    """A text stream over ``stream`` that turns progress-bar redraws into a line every ``interval``
    seconds (see the module docstring); ``close()`` writes a bar's final line still held."""

    def __init__(self, stream, interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self._stream, self._interval, self._clock = stream, interval, clock
        self._line = ""          # text of the line being written
        self._redrawn = False    # the line began with "\r": a progress bar's state
        self._held = None        # a bar's line ended by "\n": its final state, unless the cursor moves up
        self._shown = None       # the bar state written last, and when
        self._shown_at = -math.inf

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self._stream, "errors", None) or "strict"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for token in _TOKENS.split(text):
            if token == "\r":
                self._line, self._redrawn = "", True
            elif token == "\n":
                self._end_line()
            elif _CURSOR_UP.fullmatch(token):
                self._held = None  # that "\n" only moved the cursor to a lower bar
            elif not token.startswith("\x1b"):
                self._line += token
        if self._redrawn and self._line.strip() and self._clock() - self._shown_at >= self._interval:
            self._show(self._line)
        return len(text)

    def _end_line(self) -> None:
        if self._redrawn:
            self._release_held()
            self._held = self._line
        else:
            self._release_held()
            self._stream.write(self._line + "\n")
        self._line, self._redrawn = "", False

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None and held.strip() and held != self._shown:
            self._show(held)

    def _show(self, state: str) -> None:
        self._stream.write(state.rstrip() + "\n")
        self._shown, self._shown_at = state, self._clock()

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._release_held()
        self.flush()
        super().close()


@contextmanager
def throttled_stderr(interval: float = LOG_INTERVAL_S) -> Iterator[None]:
    """While inside, a ``sys.stderr`` that is not a terminal is a ``ThrottledLog``; a terminal is
    left alone."""
    original = sys.stderr
    isatty = getattr(original, "isatty", None)
    if original is None or (isatty is not None and isatty()):
        yield
        return
    sys.stderr = log = ThrottledLog(original, interval)
    try:
        yield
    finally:
        sys.stderr = original
        log.close()
