"""Feed candidates in memory: the newest posts' unit embeddings, synced from Redis.

Every replica keeps its own copy, filled from the ``recent`` index that all replicas write, so a
feed does not read 100k embeddings from Redis per request. A request scores all candidates with
one (candidates x history) matrix product.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from daemon.store import Store
from tagspace.recommend import unit_rows

log = logging.getLogger(__name__)
FETCH = 2000  # posts read from Redis per refresh step


@dataclass(frozen=True)
class CandidateView:
    """A consistent, read-only state of the index (arrays are replaced, never edited, except
    re-embedded rows)."""

    ids: list[str]
    authors: np.ndarray  # author codes, int64
    ts: np.ndarray
    vectors: np.ndarray  # unit rows, float32
    position: dict[str, int]  # post id -> row
    author_code: dict[str, int]  # user id -> code


class CandidateIndex:
    def __init__(self, store: Store, capacity: int, dim: int):
        self.store = store
        self.capacity = capacity
        self.dim = dim
        self._lock = threading.Lock()
        self._author_code: dict[str, int] = {}
        self._view = CandidateView([], np.zeros(0, np.int64), np.zeros(0),
                                   np.zeros((0, dim), np.float32), {}, self._author_code)
        self.versions = np.zeros(0, np.int64)
        self._cursor = "0"  # the last arrivals-stream id read

    def __len__(self) -> int:
        return len(self._view.ids)

    def snapshot(self) -> CandidateView:
        return self._view

    def refresh(self) -> int:
        """Add the posts stored since the last call (any replica's); returns how many."""
        added = 0
        while True:
            rows = self.store.arrivals_after(self._cursor, FETCH)
            known = self._view.position
            new = [post_id for _, post_id in rows if post_id not in known]
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

    def _append(self, posts) -> None:  # type: ignore[no-untyped-def]
        if not posts:
            return
        vecs = unit_rows(np.stack([p.embedding for p in posts]).astype(np.float32))
        with self._lock:
            old = self._view
            codes = [self._author_code.setdefault(p.user_id, len(self._author_code))
                     for p in posts]
            ids = old.ids + [p.post_id for p in posts]
            authors = np.concatenate([old.authors, np.asarray(codes, np.int64)])
            ts = np.concatenate([old.ts, [p.ts for p in posts]])
            vectors = np.concatenate([old.vectors, vecs])
            versions = np.concatenate([self.versions, [p.version for p in posts]])
            if len(ids) > self.capacity:  # keep the newest
                order = np.sort(np.argsort(ts, kind="stable")[-self.capacity:])
                ids = [ids[i] for i in order]
                authors, ts, vectors = authors[order], ts[order], vectors[order]
                versions = versions[order]
            self._publish(ids, authors, ts, vectors, versions)

    def _publish(self, ids, authors, ts, vectors, versions) -> None:  # type: ignore[no-untyped-def]
        position = {p: i for i, p in enumerate(ids)}
        self.versions = versions
        self._view = CandidateView(ids, authors, ts, vectors, position, self._author_code)

    def update(self, post_ids: list[str], embeddings: np.ndarray, version: int) -> None:
        """Re-embedded posts (this replica's re-embedder) replace their vectors."""
        with self._lock:
            view = self._view
            for post_id, emb in zip(post_ids, embeddings, strict=True):
                i = view.position.get(post_id)
                if i is not None:
                    view.vectors[i] = emb / max(float(np.linalg.norm(emb)), 1e-8)
                    self.versions[i] = version

    def remove(self, post_ids: list[str]) -> None:
        with self._lock:
            view, drop = self._view, set(post_ids)
            keep = np.array([i not in drop for i in view.ids], bool)
            self._publish([i for i, k in zip(view.ids, keep, strict=True) if k],
                          view.authors[keep], view.ts[keep], view.vectors[keep],
                          self.versions[keep])
