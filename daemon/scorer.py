"""Real-time answers: hashtag suggestions and per-user feeds.

Suggestions rank every tag the live model knows; when the request names the author, their
hashtag history from Redis personalizes the ranking (``tagspace.personalize``: z-scored content
score + a x log(1 + times the author used the tag)). Feeds rank the in-memory candidates by max
cosine similarity over the user's newest history posts (paper section 4.3), never showing the
user's own posts or posts they interacted with or hid; a user without history gets the freshest
popular posts (``cold_start``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from daemon.candidates import CandidateIndex
from daemon.model_hub import ModelHub
from daemon.store import Store
from tagspace.dataset import Post
from tagspace.personalize import AuthorHistory, PersonalizeWeights, combine, history_features
from tagspace.recommend import unit_rows
from tagspace.tagger import top_k
from tagspace.text import parse_post_text

DEFAULT_WEIGHTS = PersonalizeWeights(count=4.0)  # the middle of the tuning grid's best region
FRESH_HALF_LIFE_S = 6 * 3600.0  # cold start: popularity discounted by age
COLD_START_POOL = 5000  # the most liked posts considered for a cold-start feed


@dataclass(frozen=True)
class FeedItem:
    post_id: str
    score: float


class Scorer:
    def __init__(self, hub: ModelHub, store: Store, candidates: CandidateIndex,
                 feed_history: int, weights: PersonalizeWeights = DEFAULT_WEIGHTS):
        self.hub, self.store, self.candidates = hub, store, candidates
        self.feed_history = feed_history
        self.weights = weights

    def suggest(self, text: str, k: int, user_id: str | None) -> list[tuple[str, float]]:
        online = self.hub.online
        tokens = parse_post_text(text).tokens
        scores = online.tagger.scores([Post("", user_id, None, tokens, ())])
        if user_id:
            counts = self.store.user_tags(user_id)
            if counts:  # personalize over the tags in use only (free rows are not tags)
                active = np.flatnonzero(np.isfinite(scores[0]))
                history = AuthorHistory(counts=Counter(counts))
                features = history_features(online.tags, [history])
                features = type(features)(*(m[:, active] for m in (
                    features.count, features.similarity, features.lexical)))
                popularity = np.zeros(len(active), np.float32)
                mixed = combine(scores[:, active], features, self.weights, popularity)
                scores = np.full_like(scores, -np.inf)
                scores[:, active] = mixed
        return [(s.tag, s.score) for s in top_k(scores[0], online.tags, k)]

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
        fresh_vectors = {}
        if stale:
            embs, _, _ = self.hub.reembed(self.store, stale)
            fresh_vectors = {p.post_id: e for p, e in zip(stale, embs, strict=True)}
        vecs = np.stack([fresh_vectors.get(p.post_id, p.embedding) for p in stored])
        return unit_rows(vecs.astype(np.float32))
