"""The feed candidates' columns in arrays with room to grow, so that new posts cost O(new).

Every refresh (twice a second) used to build each column anew: the 54k x 64 float32 rows
concatenated with the new ones, the bfloat16 copy converted again, all under the serving
process's GIL. Readers hold views, so a published row may never change place; here a view is the
slice ``[start, end)`` of the buffers, appends write past ``end`` (no published view reaches
there), and evicting the oldest rows, when they are the first ones (posts arrive in about the
order of their timestamps), moves ``start``. Only when the room runs out, or rows go from the
middle, are the live rows copied into new buffers with room again (half their number: an
amortized O(1) copy per post, at most 1.5x the live rows' memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_ROOM = 2000  # rows of room at least (one refresh's fetch)


@dataclass(frozen=True)
class Columns:
    authors: np.ndarray  # author codes, int64
    ts: np.ndarray  # float64
    vectors: np.ndarray  # unit rows, float32 (n, d)
    versions: np.ndarray  # model version of each row, int64
    keys: np.ndarray  # row serials, uint64, ascending
    low: torch.Tensor | None  # the rows in bfloat16, or None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> Columns:
        """Copies of the given rows (a new ``Columns``, not a view)."""
        return Columns(self.authors[rows], self.ts[rows], self.vectors[rows],
                       self.versions[rows], self.keys[rows],
                       self.low[torch.from_numpy(rows)] if self.low is not None else None)


def empty_columns(dim: int, bf16: bool) -> Columns:
    return Columns(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, dim), np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.uint64),
                   torch.zeros((0, dim), dtype=torch.bfloat16) if bf16 else None)


class RowBuffers:
    """Growable columns; ``live()`` is a view of the rows in use. Not thread-safe: its owner
    (``CandidateIndex``) holds its lock around every change."""

    def __init__(self, dim: int, bf16: bool):
        self.dim, self.bf16 = dim, bf16
        self._reset(empty_columns(dim, bf16))

    def live(self) -> Columns:
        s, e, b = self._start, self._end, self._buf
        return Columns(b.authors[s:e], b.ts[s:e], b.vectors[s:e], b.versions[s:e],
                       b.keys[s:e], b.low[s:e] if b.low is not None else None)

    def replace(self, rows: Columns) -> None:
        """These rows, in new buffers (views published before keep the old ones)."""
        self._reset(rows)

    def extend(self, authors: np.ndarray, ts: np.ndarray, vectors: np.ndarray,
               versions: np.ndarray, keys: np.ndarray) -> None:
        """Rows after the live ones; ``vectors`` float32, converted to bf16 here once."""
        m = len(keys)
        low = torch.from_numpy(vectors).to(torch.bfloat16) if self.bf16 else None
        if self._end + m > len(self._buf.keys):  # no room: the live rows and these, anew
            live = self.live()
            self._reset(Columns(
                np.concatenate([live.authors, authors]), np.concatenate([live.ts, ts]),
                np.concatenate([live.vectors, vectors]),
                np.concatenate([live.versions, versions]), np.concatenate([live.keys, keys]),
                torch.cat([live.low, low]) if live.low is not None and low is not None
                else None))
            return
        b, at = self._buf, slice(self._end, self._end + m)
        b.authors[at], b.ts[at], b.vectors[at] = authors, ts, vectors
        b.versions[at], b.keys[at] = versions, keys
        if b.low is not None and low is not None:
            b.low[at] = low
        self._end += m

    def drop_first(self, n: int) -> None:
        """The ``n`` first live rows are no longer live (in place: they stay in the buffers,
        unseen by the views published from now on)."""
        self._start += min(n, self._end - self._start)

    def _reset(self, rows: Columns) -> None:
        n = len(rows)
        size = n + max(n // 2, MIN_ROOM)

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.empty((size, *a.shape[1:]), a.dtype)
            out[:n] = a
            return out

        low = None
        if self.bf16:
            low = torch.empty((size, self.dim), dtype=torch.bfloat16)
            low[:n] = rows.low if rows.low is not None else \
                torch.from_numpy(rows.vectors).to(torch.bfloat16)
        self._buf = Columns(grown(rows.authors), grown(rows.ts), grown(rows.vectors),
                            grown(rows.versions), grown(rows.keys), low)
        self._start, self._end = 0, n
