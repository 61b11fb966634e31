"""Requests in flight, counted in shared memory: the HTTP side counts them, training yields to
them.

The trainer runs in a process of its own at ``SCHED_IDLE``, yet on the 2-core VM of
docs/PERFORMANCE.md its steps still slowed the serving process about 1.8x (every function in its
profile took that many more samples, and p99 fell from 194 to 60 ms when the trainer was merely
stopped). The kernel's priorities do not reach what a virtual CPU shares, so the trainer now
also asks: before each step, a worker waits while any request is being answered, up to
``train_yield_max_s`` (so that training is slowed, never stopped, by a saturated API).

Each serving process (or the daemon, when it serves itself) owns one slot of an int32 array and
is the only writer of it, from its event loop: no locks, and a reader sees a count that is at
worst one request old.
"""

from __future__ import annotations

import time

import numpy as np
import torch

SLOTS = 64  # serving processes a daemon may have (serve_processes is far below)
POLL_S = 0.0005


def shared_counts() -> torch.Tensor:
    return torch.zeros(SLOTS, dtype=torch.int32).share_memory_()


class InFlight:
    """One serving process's slot (``counts`` None: nothing shares it, nothing to count)."""

    def __init__(self, counts: np.ndarray | None = None, slot: int = 0):
        if counts is not None and not 0 <= slot < len(counts):
            raise ValueError(f"slot {slot} outside the {len(counts)} shared slots")
        self.counts, self.slot = counts, slot

    def begin(self) -> None:
        if self.counts is not None:
            self.counts[self.slot] += 1

    def end(self) -> None:
        if self.counts is not None:
            self.counts[self.slot] -= 1


def wait_for_idle_serving(counts: np.ndarray, max_wait_s: float,
                          stopped: np.ndarray | None = None) -> float:
    """Until no request is in flight (or ``max_wait_s`` passed, or ``stopped[0]`` is set);
    the seconds waited."""
    if not counts.any():
        return 0.0
    start = time.monotonic()
    deadline = start + max_wait_s
    while counts.any() and time.monotonic() < deadline:
        if stopped is not None and stopped[0]:
            break
        time.sleep(POLL_S)
    return time.monotonic() - start
