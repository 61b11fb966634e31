"""Progress of long loops: a tqdm bar on a terminal, a few log lines anywhere else.

A bar redraws itself with carriage returns; written to a log file or CI output that is hundreds of
KB of noise per training run. Off a terminal, progress is logged each time a quarter is done.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any, Protocol

from tqdm import tqdm

log = logging.getLogger(__name__)
LOG_STEPS = 4  # off a terminal: a line at 25%, 50%, 75% and 100%


class ProgressBar(Protocol):
    """What loops use of a bar: tqdm's ``update`` and ``close``."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> None: ...


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    total: int | None, desc: str, unit: str = "it", disable: bool = False, leave: bool = False
) -> ProgressBar:
    """A tqdm bar when stderr is a terminal, else a ``LogProgress``; nothing when ``disable``."""
    if disable:
        return _Silent()
    if is_terminal():
        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LogProgress(total, desc, unit)


class LogProgress:
    """tqdm's ``update``/``close`` as a log line per quarter done; thread-safe (Hogwild workers
    update one bar from several threads)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", steps: int = LOG_STEPS):
        self.total, self.desc, self.unit, self.steps = total, desc, unit, steps
        self.n = 0
        self._logged = 0  # quarters logged so far
        self._start = time.perf_counter()
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if not self.total:
                return
            done = min(self.steps, self.n * self.steps // self.total)
            if done > self._logged:
                self._logged = done
                self._log(f"{100 * done // self.steps}% ({self.n}/{self.total} {self.unit}s")

    def close(self) -> None:
        with self._lock:  # an unknown total is reported once, at the end
            if not self.total and self.n:
                self._log(f"done ({self.n} {self.unit}s")

    def _log(self, what: str) -> None:
        seconds = time.perf_counter() - self._start
        rate = self.n / seconds if seconds > 0 else 0.0
        log.info("%s: %s, %.1f s, %.0f %ss/s)", self.desc, what, seconds, rate, self.unit)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
