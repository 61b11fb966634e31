"""The start-up heap, out of the garbage collector's sight."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Out of the garbage collector's sight: everything start-up built (modules, the model,
    the vocabularies), which is never garbage. A full collection of the daemon's ~240k
    start-up objects took 121 ms here (and stopped every thread, requests included: the p99
    of docs/PERFORMANCE.md); after ``gc.freeze`` it takes microseconds."""
    gc.collect()
    gc.freeze()
