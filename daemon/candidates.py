"""Feed candidates in memory: the newest posts' unit embeddings, synced from Redis.

Every replica keeps its own copy, filled from the ``arrivals`` stream that all replicas write,
so a feed does not read 100k embeddings from Redis per request. Alongside the float32 rows it
keeps what the feed's two scans need: a bfloat16 copy of the rows (the exact scan, where the
CPU multiplies bf16 natively) and, for large candidate sets, an ANN index
(``daemon/feed_index.py``) that follows every add, eviction, removal and re-embedding.

Readers take ``snapshot()``: a view whose rows never move and are never edited (except the rows
of re-embedded posts, replaced in place), so a request sees one consistent state without a lock.
The views are slices of growable buffers (``daemon.candidate_rows``): new posts cost O(new),
not a copy of every row.

A post's row is found through its key (``CandidateView.row``): the post id -> key dict is shared
by the views and only grows as posts arrive, since the keys of a view's rows are ascending; it
is built anew only once it holds more gone posts than live ones (or a post comes back), and the
views made before keep the old one. A Python dict of every row rebuilt at each refresh held the
serving process's GIL for 1.4 ms at 25k candidates and 8.8 ms at 100k, twice a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from daemon.candidate_rows import Columns, RowBuffers
from daemon.feed_index import FeedIndex
from daemon.store import Store, StoredPost
from tagspace.recommend import unit_rows

log = logging.getLogger(__name__)
FETCH = 2000  # posts read from Redis per refresh step
# From this many candidates on, the view carries the ANN index and FeedRanker may answer by it
# (when n >= ANN_CANDIDATES_PER_QUERY x the history length); below it every feed is an exact
# scan (under 1 ms there). scripts/bench_feed.py: the scan's time per request crosses the
# ANN's near 25k candidates for 10-post histories. A capacity below it never builds the
# index. 0 or None: never.
ANN_MIN_CANDIDATES = 25_000


@dataclass(frozen=True)
class CandidateView:
    """A consistent, read-only state of the index (rows in arrival order)."""

    ids: list[str]
    authors: np.ndarray  # author codes, int64
    ts: np.ndarray
    vectors: np.ndarray  # unit rows, float32 (n, d)
    key_of: dict[str, int]  # post id -> key, for these rows and perhaps others (``row``)
    author_code: dict[str, int]  # user id -> code
    versions: np.ndarray  # model version of each row, int64
    keys: np.ndarray  # row serials, uint64, ascending: the ANN index's keys
    low: torch.Tensor | None = None  # the rows in bfloat16 (None: the scan runs in float32)
    ann: FeedIndex | None = None  # set while there are at least ANN_MIN_CANDIDATES rows

    def row(self, post_id: str) -> int | None:
        """The row of ``post_id`` in this view, None when it is not here."""
        key = self.key_of.get(post_id)
        if key is None:
            return None
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and int(self.keys[i]) == key else None

    def rows(self, post_ids: Iterable[str]) -> np.ndarray:
        """The rows of those of ``post_ids`` that are in this view (int64)."""
        key_of = self.key_of
        keys = np.fromiter((k for k in map(key_of.get, post_ids) if k is not None), np.uint64)
        at = np.searchsorted(self.keys, keys)
        inside = at < len(self.keys)
        at, keys = at[inside], keys[inside]
        return at[self.keys[at] == keys].astype(np.int64)


@cache
def cpu_has_bf16() -> bool:
    """The CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): a bf16 scan pays there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class CandidateIndex:
    def __init__(self, store: Store, capacity: int, dim: int, *,
                 ann_min_candidates: int | None = ANN_MIN_CANDIDATES,
                 bf16: bool | None = None, ann: FeedIndex | None = None):
        """``bf16``: keep a bfloat16 copy for the exact scan (None: where the CPU has it).
        ``ann``: the index to keep (default: a ``FeedIndex`` when ``capacity`` reaches
        ``ann_min_candidates``)."""
        self.store = store
        self.capacity = capacity
        self.dim = dim
        self.bf16 = cpu_has_bf16() if bf16 is None else bf16
        self.ann_min_candidates = ann_min_candidates or 0
        if ann is None and self.ann_min_candidates and capacity >= self.ann_min_candidates:
            ann = FeedIndex(dim)
        self._ann = ann
        self._lock = threading.Lock()
        self._author_code: dict[str, int] = {}
        self._key_of: dict[str, int] = {}  # shared by the views (module docstring)
        self._next_key = 0
        self._rows = RowBuffers(dim, self.bf16)  # the columns' storage (daemon.candidate_rows)
        self._view = self._make_view([], self._rows.live())
        self._cursor = "0"  # the last arrivals-stream id read

    def __len__(self) -> int:
        return len(self._view.ids)

    @property
    def versions(self) -> np.ndarray:
        """The model version of each row of the current snapshot."""
        return self._view.versions

    @property
    def ann(self) -> FeedIndex | None:
        return self._ann

    def snapshot(self) -> CandidateView:
        return self._view

    def refresh(self) -> int:
        """Add the posts stored since the last call (any replica's); returns how many."""
        added = 0
        while True:
            rows = self.store.arrivals_after(self._cursor, FETCH)
            view, page = self._view, [post_id for _, post_id in rows]
            known = {view.ids[i] for i in view.rows(page).tolist()}
            # a page can name a post twice (written again after its key expired): once
            new = list(dict.fromkeys(p for p in page if p not in known))
            if new:
                stored = self.store.posts(new)
                keep = [s for s in stored if s is not None and s.embedding is not None
                        and len(s.embedding) == self.dim]
                self._append(keep)
                added += len(keep)
            if rows:
                self._cursor = rows[-1][0]
            if len(rows) < FETCH:
                return added

    def _append(self, posts: list[StoredPost]) -> None:
        if not posts:
            return
        vecs = unit_rows(np.stack([np.asarray(p.embedding) for p in posts]).astype(np.float32))
        with self._lock:
            old = self._view
            codes = [self._author_code.setdefault(p.user_id, len(self._author_code))
                     for p in posts]
            first = self._next_key
            new_keys = np.arange(first, first + len(posts), dtype=np.uint64)
            self._next_key += len(posts)
            new_ids = [p.post_id for p in posts]
            key_of = self._key_of
            if len(key_of) > 2 * len(old.ids) + FETCH or any(p in key_of for p in new_ids):
                # more gone posts than live ones, or one back: a new dict (old views keep theirs)
                key_of = self._key_of = dict(zip(old.ids, old.keys.tolist(), strict=True))
            key_of.update(zip(new_ids, new_keys.tolist(), strict=True))
            ids = old.ids + new_ids
            self._rows.extend(np.asarray(codes, np.int64), np.asarray([p.ts for p in posts],
                                                                      np.float64),
                              vecs, np.asarray([p.version for p in posts], np.int64), new_keys)
            rows, evicted = self._rows.live(), np.zeros(0, np.uint64)
            over = len(ids) - self.capacity
            if over > 0:  # keep the newest by timestamp
                if rows.ts[:over].max() <= rows.ts[over:].min():
                    # the oldest are the first rows (the usual case): dropped in place
                    evicted = rows.keys[:over].copy()
                    self._rows.drop_first(over)
                    ids = ids[over:]
                else:
                    order = np.sort(np.argsort(rows.ts, kind="stable")[-self.capacity:])
                    dropped = np.ones(len(ids), bool)
                    dropped[order] = False
                    evicted = rows.keys[dropped]
                    ids = [ids[i] for i in order]
                    self._rows.replace(rows.take(order))
                rows = self._rows.live()
            if self._ann is not None:
                # before the view is published, so a published row is always in the index;
                # the feed drops whatever the index returns that its view lacks
                fresh = rows.keys >= new_keys[0]
                self._ann.add(rows.keys[fresh], rows.vectors[fresh])
            self._publish(ids, rows)
            if self._ann is not None:
                self._ann.remove(evicted[evicted < new_keys[0]])  # new ones were never added

    def _make_view(self, ids: list[str], rows: Columns) -> CandidateView:
        ann = (self._ann if self._ann is not None and len(ids) >= self.ann_min_candidates
               else None)
        return CandidateView(ids, rows.authors, rows.ts, rows.vectors, self._key_of,
                             self._author_code, rows.versions, rows.keys, rows.low, ann)

    def _publish(self, ids: list[str], rows: Columns) -> None:
        self._view = self._make_view(ids, rows)

    def update(self, post_ids: list[str], embeddings: np.ndarray, version: int) -> None:
        """Re-embedded posts (this replica's re-embedder) replace their vectors."""
        with self._lock:
            view = self._view
            found: dict[int, np.ndarray] = {}  # row -> embedding (a post named twice: the last)
            for post_id, emb in zip(post_ids, embeddings, strict=True):
                i = view.row(post_id)
                if i is not None:
                    found[i] = emb
            if not found:
                return
            at = np.fromiter(found, np.int64, len(found))
            vecs = unit_rows(np.stack(list(found.values())).astype(np.float32))
            view.vectors[at] = vecs
            view.versions[at] = version
            if view.low is not None:
                view.low[torch.from_numpy(at)] = torch.from_numpy(vecs).to(torch.bfloat16)
            if self._ann is not None:
                self._ann.update(view.keys[at], vecs)

    def remove(self, post_ids: list[str]) -> None:
        with self._lock:
            view, drop = self._view, set(post_ids)
            keep = np.array([i not in drop for i in view.ids], bool)
            if keep.all():
                return
            self._rows.replace(self._rows.live().take(np.flatnonzero(keep)))
            self._publish([i for i, k in zip(view.ids, keep, strict=True) if k],
                          self._rows.live())
            if self._ann is not None:
                self._ann.remove(view.keys[~keep])
