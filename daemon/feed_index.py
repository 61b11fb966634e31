"""An approximate nearest-neighbour index (HNSW, usearch) over the feed candidates' unit vectors.

It answers the feed's max-cosine query when the exact scan costs more (``CandidateIndex``
keeps it, ``FeedRanker`` asks it): each history post is a query; the union of their nearest
candidates is then re-scored exactly (max cosine over the whole history), filtered and cut to
the top k. A candidate j of the true top k is a near neighbour of its best history post q:
every candidate nearer to q than j scores at least as high as j, so j is within q's nearest
``k + (excluded posts near q)``; ``count`` leaves room for the excluded ones and for the
graph's own misses (recall measured by scripts/bench_feed.py).

Keys are the candidates' row serials (``CandidateView.keys``). Online: ``add``, ``remove``
(usearch marks the slot free and reuses it, so the index stays at the candidates' size) and
``update`` (= remove + add). usearch releases the GIL while it works, and its graph is not
safe to change during a search, so searches share a lock that changes take alone; a change
takes it for at most ``ADD_SLICE`` insertions at a time, so a feed never waits on a whole
refresh page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from usearch.index import Index

# HNSW parameters (scripts/bench_feed.py measures recall@20 and time against the exact scan):
CONNECTIVITY = 16  # graph degree M: 16 is the usual default for d = 64
EXPANSION_ADD = 64  # candidate list while inserting (efConstruction)
EXPANSION_SEARCH = 32  # candidate list while searching (ef); at least the neighbours asked
NEIGHBOURS = 32  # neighbours asked per history post
DTYPE = "i8"  # stored vectors: a quarter of f32's bytes, same recall (results are re-scored)
ADD_SLICE = 8  # insertions per hold of the exclusive lock (~0.1-0.5 ms each on this CPU)


class _SharedLock:
    """Many readers or one writer, phase-fair: readers waiting when a writer lets go go first,
    before the next writer; a waiting writer stops readers that come later (no starvation
    either way). Without the readers' turn, a writer taking the lock again at once (the next
    ``ADD_SLICE`` of a page) kept a waiting feed out of the index for the whole page."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._waiting_readers = 0
        self._readers_turn = False  # set when a writer leaves with readers waiting

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._waiting_readers += 1
            while self._writer or (self._waiting_writers and not self._readers_turn):
                self._cond.wait()
            self._waiting_readers -= 1
            if not self._waiting_readers:
                self._readers_turn = False
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers or self._readers_turn:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers_turn = self._waiting_readers > 0
                self._cond.notify_all()


class FeedIndex:
    """HNSW over unit vectors, inner product (= cosine) as similarity, uint64 keys."""

    def __init__(self, dim: int, *, connectivity: int = CONNECTIVITY,
                 expansion_add: int = EXPANSION_ADD, expansion_search: int = EXPANSION_SEARCH,
                 neighbours: int = NEIGHBOURS, dtype: str = DTYPE):
        if min(dim, connectivity, expansion_add, expansion_search, neighbours) < 1:
            raise ValueError("FeedIndex: dim, connectivity, expansions and neighbours must "
                             "be >= 1")
        self.dim, self.neighbours = dim, neighbours
        self._index = Index(ndim=dim, metric="ip", dtype=dtype, connectivity=connectivity,
                            expansion_add=expansion_add, expansion_search=expansion_search)
        self._lock = _SharedLock()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: int) -> bool:
        return bool(self._index.contains(np.uint64(key)))

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert new keys (unit rows); a key already present is an error (use update)."""
        keys = np.ascontiguousarray(keys, np.uint64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        assert vectors.shape == (len(keys), self.dim), vectors.shape
        for start in range(0, len(keys), ADD_SLICE):
            with self._lock.exclusive():
                self._index.add(keys[start:start + ADD_SLICE],
                                vectors[start:start + ADD_SLICE], threads=1)

    def remove(self, keys: np.ndarray) -> None:
        """Drop keys; unknown ones are ignored."""
        keys = np.ascontiguousarray(keys, np.uint64)
        if len(keys):
            with self._lock.exclusive():
                self._index.remove(keys)

    def update(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """New vectors for keys (a re-embedded post): remove, then add."""
        keys = np.ascontiguousarray(keys, np.uint64)
        present = np.asarray(self._index.contains(keys), bool).reshape(-1)
        self.remove(keys[present])
        self.add(keys, vectors)

    def search(self, queries: np.ndarray, count: int | None = None) -> np.ndarray:
        """The union of each query's ``count`` nearest keys, unique (order undefined)."""
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        count = count or self.neighbours
        with self._lock.shared():
            if not len(self._index) or not len(queries):
                return np.zeros(0, np.uint64)
            found = self._index.search(queries, count, threads=1)
        keys = np.asarray(found.keys).reshape(len(queries), -1)
        counts = np.asarray(getattr(found, "counts", [len(found)])).reshape(-1)
        filled = np.arange(keys.shape[1]) < counts[:, None]  # fewer than count: the rest is junk
        return np.unique(keys[filled])
