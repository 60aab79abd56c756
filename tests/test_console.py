"""patchstore.console: progress bars in logs, strict JSON, numba threads."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from tqdm import tqdm

from patchstore.console import ThrottledLog, json_text, set_numba_threads, throttled_stderr


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_bar_in_a_log_gives_a_start_line_a_line_per_interval_and_an_end_line():
    """1000 redraws over 100 s give the first state, one line per 30 s and the final state; no carriage return."""
    out, clock = io.StringIO(), Clock()
    log = ThrottledLog(out, interval=30.0, clock=clock)
    with tqdm(total=1000, file=log, mininterval=0, desc="volumes", ncols=60) as bar:
        for _ in range(1000):
            clock.now += 0.1
            bar.update()
    print("done", file=log)
    log.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 4 <= len(lines) <= 7, lines  # start, ~every 30 s over 100 s, the end, "done"
    assert lines[0].startswith("volumes:   0%") and "1000/1000" in lines[-2] and lines[-1] == "done"


def test_plain_lines_pass_unchanged_and_in_order():
    """Text that is not a progress bar is written as it comes."""
    out = io.StringIO()
    log = ThrottledLog(out, clock=Clock())
    log.write("warning: a\n")
    log.write("b")
    log.write(" c\n")
    log.close()
    assert out.getvalue() == "warning: a\nb c\n"


def test_nested_bars_do_not_print_a_line_per_redraw():
    """A bar at position 1 (moved to with newlines and back up with ESC[A) stays throttled."""
    out, clock = io.StringIO(), Clock()
    log = ThrottledLog(out, interval=30.0, clock=clock)
    with tqdm(total=2, file=log, mininterval=0, desc="outer") as outer:
        for _ in range(2):
            with tqdm(total=200, file=log, mininterval=0, desc="inner", leave=False, position=1) as inner:
                for _ in range(200):
                    clock.now += 0.01
                    inner.update()
            outer.update()
    log.close()
    lines = out.getvalue().splitlines()
    assert len(lines) <= 4, lines
    assert lines[-1].startswith("outer: 100%") and "\x1b" not in out.getvalue()


def test_throttled_stderr_leaves_a_terminal_alone(monkeypatch):
    """A terminal keeps its stderr; anything else gets a ThrottledLog until the block ends."""
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, wrapped in ((Tty(), False), (io.StringIO(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        with throttled_stderr():
            assert isinstance(sys.stderr, ThrottledLog) == wrapped
        assert sys.stderr is stream


def test_json_text_writes_null_for_nan_and_infinity():
    """NaN and inf (Python or NumPy, nested) become null: any JSON parser reads the text."""
    data = {"a": math.nan, "b": [math.inf, np.float32(-np.inf), np.float64(1.5)], "c": {"d": np.int64(3)}}
    assert _strict(json_text(data)) == {"a": None, "b": [None, None, 1.5], "c": {"d": 3}}


def test_numba_threads_are_set_and_checked():
    """set_numba_threads(1) leaves numba one thread; 0 is refused naming the value."""
    import numba
    before = numba.get_num_threads()
    try:
        assert set_numba_threads(1) == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
    with pytest.raises(ValueError, match="threads is 0; expected"):
        set_numba_threads(0)
