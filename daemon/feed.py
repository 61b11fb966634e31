"""Per-user feeds: the in-memory candidates ranked by max cosine similarity over the user's
newest history posts (paper section 4.3), never showing the user's own posts or posts they
interacted with or hid; a user without history gets the freshest popular posts (``cold_start``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from daemon.candidates import CandidateIndex
from daemon.model_hub import ModelHub
from daemon.store import Store
from tagspace.recommend import unit_rows

FRESH_HALF_LIFE_S = 6 * 3600.0  # cold start: popularity discounted by age
COLD_START_POOL = 5000  # the most liked posts considered for a cold-start feed


@dataclass(frozen=True)
class FeedItem:
    post_id: str
    score: float


class FeedRanker:
    def __init__(self, hub: ModelHub, store: Store, candidates: CandidateIndex,
                 feed_history: int):
        self.hub, self.store, self.candidates = hub, store, candidates
        self.feed_history = feed_history

    def feed(self, user_id: str, k: int) -> tuple[list[FeedItem], bool]:
        """(items, cold_start)."""
        view = self.candidates.snapshot()
        ids, ts, vectors = view.ids, view.ts, view.vectors
        if not ids:
            return [], True
        allowed = view.authors != view.author_code.get(user_id, -1)  # never their own posts
        seen = [view.position[p] for p in self.store.seen(user_id) if p in view.position]
        allowed[seen] = False  # nor what they liked, shared, hid...
        history = self._history_vectors(user_id)
        if history is None:
            liked = self.store.most_popular(COLD_START_POOL)
            popularity = np.fromiter((liked.get(i, 0.0) for i in ids), np.float64, len(ids))
            age = np.clip(time.time() - ts, 0.0, None)
            scores = np.log1p(popularity) + 0.5 ** (age / FRESH_HALF_LIFE_S)
            cold = True
        else:
            scores = (vectors @ history.T).max(axis=1)
            cold = False
        scores = np.where(allowed, scores, -np.inf)
        k = min(k, int(allowed.sum()))
        if k <= 0:
            return [], cold
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [FeedItem(ids[i], float(scores[i])) for i in best], cold

    def _history_vectors(self, user_id: str) -> np.ndarray | None:
        """Unit embeddings of the user's newest history posts; ones made by an older model
        version are re-embedded now (and written back), so a feed compares like with like."""
        post_ids = self.store.history(user_id, self.feed_history)
        if not post_ids:
            return None
        version = self.hub.version
        stored = [p for p in self.store.posts(post_ids, with_tokens=True) if p is not None]
        if not stored:
            return None
        stale = [p for p in stored if p.version < version or p.embedding is None]
        vectors = {p.post_id: p.embedding for p in stored if p.embedding is not None}
        if stale:
            embs, _, _ = self.hub.reembed(self.store, stale)
            vectors.update({p.post_id: e for p, e in zip(stale, embs, strict=True)})
        vecs = np.stack([vectors[p.post_id] for p in stored])
        return unit_rows(vecs.astype(np.float32))
