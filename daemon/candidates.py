"""Feed candidates in memory: the newest posts' unit embeddings, synced from Redis.

Every replica keeps its own copy, filled from the ``recent`` index that all replicas write, so a
feed does not read 100k embeddings from Redis per request. A request scores all candidates with
one (candidates x history) matrix product.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from daemon.store import Store

log = logging.getLogger(__name__)
FETCH = 2000  # posts read from Redis per refresh step


class CandidateIndex:
    def __init__(self, store: Store, capacity: int, dim: int):
        self.store = store
        self.capacity = capacity
        self.dim = dim
        self._lock = threading.Lock()
        self.ids: list[str] = []
        self.authors: list[str] = []
        self.ts = np.zeros(0)
        self.vectors = np.zeros((0, dim), np.float32)
        self.versions = np.zeros(0, np.int64)
        self._known: set[str] = set()
        self._cursor = "0"  # the last arrivals-stream id read

    def __len__(self) -> int:
        return len(self.ids)

    def refresh(self) -> int:
        """Add the posts stored since the last call (any replica's); returns how many."""
        added = 0
        while True:
            rows = self.store.arrivals_after(self._cursor, FETCH)
            new = [post_id for _, post_id in rows if post_id not in self._known]
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
        vecs = np.stack([p.embedding for p in posts]).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-8)
        with self._lock:
            ids = self.ids + [p.post_id for p in posts]
            authors = self.authors + [p.user_id for p in posts]
            ts = np.concatenate([self.ts, [p.ts for p in posts]])
            vectors = np.concatenate([self.vectors, vecs])
            versions = np.concatenate([self.versions, [p.version for p in posts]])
            self._known.update(p.post_id for p in posts)
            if len(ids) > self.capacity:  # keep the newest
                order = np.argsort(ts, kind="stable")[-self.capacity:]
                order.sort()
                drop = set(range(len(ids))) - set(order.tolist())
                self._known.difference_update(ids[i] for i in drop)
                ids = [ids[i] for i in order]
                authors = [authors[i] for i in order]
                ts, vectors, versions = ts[order], vectors[order], versions[order]
            self.ids, self.authors, self.ts = ids, authors, ts
            self.vectors, self.versions = vectors, versions

    def update(self, post_ids: list[str], embeddings: np.ndarray, version: int) -> None:
        """Re-embedded posts (this replica's re-embedder) replace their vectors."""
        with self._lock:
            where = {p: i for i, p in enumerate(self.ids)}
            for post_id, emb in zip(post_ids, embeddings, strict=True):
                i = where.get(post_id)
                if i is not None:
                    self.vectors[i] = emb / max(float(np.linalg.norm(emb)), 1e-8)
                    self.versions[i] = version

    def remove(self, post_ids: list[str]) -> None:
        with self._lock:
            drop = set(post_ids)
            keep = np.array([i not in drop for i in self.ids], bool)
            self.ids = [i for i, k in zip(self.ids, keep, strict=True) if k]
            self.authors = [a for a, k in zip(self.authors, keep, strict=True) if k]
            self.ts, self.vectors = self.ts[keep], self.vectors[keep]
            self.versions = self.versions[keep]
            self._known -= drop

    def snapshot(self) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        with self._lock:
            return self.ids, self.authors, self.ts, self.vectors
