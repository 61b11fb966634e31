"""What answers requests: the feed candidates, the suggestion scorer and the feed ranker over
one model view (the hub in the daemon's process, or a serving process's mirror of it), and
their upkeep (new posts into the candidates, stale embeddings refreshed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from daemon.candidates import CandidateIndex
from daemon.config import Settings
from daemon.feed import FeedRanker
from daemon.metrics import Metrics
from daemon.model_hub import ServedModel
from daemon.open_vocab import OpenVocabRanking
from daemon.scorer import Scorer
from daemon.store import Store

REEMBED_BATCH = 256


@dataclass
class Reembedded:
    post_ids: list[str]  # the posts found, in order
    embeddings: np.ndarray  # their new embeddings
    version: int  # the model version that made them
    changed: int  # how many replaced an older version's in Redis
    gone: list[str]  # the posts no longer stored (evicted, expired)


def reembed_posts(model: ServedModel, store: Store, post_ids: list[str]) -> Reembedded:
    """Embed stored posts with ``model`` and write the embeddings back where an older version
    made them."""
    found = store.posts(post_ids, with_tokens=True)
    gone = [i for i, p in zip(post_ids, found, strict=True) if p is None]
    stored = [p for p in found if p is not None]
    if not stored:
        return Reembedded([], np.zeros((0, 0), np.float32), model.version, 0, gone)
    embs, version, changed = model.reembed(store, stored)
    return Reembedded([p.post_id for p in stored], embs, version, changed, gone)


def connect_store(settings: Settings, metrics: Metrics) -> Store:
    """The Redis state store of these settings, its round trips timed into ``metrics``."""
    s = settings
    client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                  health_check_interval=10)
    return Store(client, s.redis_prefix, history_size=s.history_size, seen_size=s.seen_size,
                 recent_posts=s.recent_posts, event_ttl_s=s.event_ttl_s,
                 post_ttl_s=s.post_ttl_s, user_ttl_s=s.user_ttl_s,
                 embedding_dtype=s.redis_embedding_dtype, observe=metrics.observe_redis)


class Serving:
    def __init__(self, settings: Settings, store: Store, model: ServedModel, metrics: Metrics,
                 reembedder: Callable[[list[str]], Reembedded] | None = None):
        """``reembedder``: who re-embeds stale posts (default: here, with ``model``; the
        serving process hands them to the daemon's process, keeping the work off its GIL)."""
        s = settings
        self.settings, self.store, self.model, self.metrics = s, store, model, metrics
        self.reembedder = reembedder or (lambda ids: reembed_posts(model, store, ids))
        dim = model.tagger.model.config.dim
        self.candidates = CandidateIndex(store, s.recent_posts, dim,
                                         ann_min_candidates=s.feed_ann_min_candidates)
        self.scorer = Scorer(model, store, OpenVocabRanking.load(Path(s.open_vocab_scorers))
                             if s.open_vocab_scorers else None)
        self.feeds = FeedRanker(model, store, self.candidates, s.feed_history,
                                ann_candidates_per_query=s.feed_ann_candidates_per_query)

    def maintain(self, reembeds: bool = True) -> None:
        """One upkeep step: new posts become candidates, then (``reembeds``) up to the
        re-embedding budget of one ``candidate_refresh_s`` is refreshed. Redis errors
        propagate."""
        s = self.settings
        self.candidates.refresh()
        self.metrics.feed_candidates.set(len(self.candidates))
        if reembeds:
            self.reembed(int(s.reembed_rate * s.candidate_refresh_s) + 1)

    def reembed(self, budget: int) -> None:
        """Refresh up to ``budget`` posts embedded by an older model version: the history posts
        feeds found so first, then candidates, newest first."""
        version = self.model.version
        budget = min(budget, REEMBED_BATCH)
        stale = self.feeds.take_stale(budget)
        view = self.candidates.snapshot()  # one view: ids and versions aligned
        if len(stale) < budget:
            wanted = set(stale)
            older = (view.versions < version).nonzero()[0][::-1][: budget]
            stale += [p for p in (view.ids[i] for i in older)
                      if p not in wanted][: budget - len(stale)]
        if not stale:
            return
        done = self.reembedder(stale)
        self.metrics.reembedded.inc(done.changed)
        self.apply_reembedded(done)

    def apply_reembedded(self, done: Reembedded) -> None:
        """Re-embedded posts (here or by another serving process) into the candidates."""
        if done.gone:  # evicted or lost in Redis: no longer candidates
            self.candidates.remove(done.gone)
        if done.post_ids:
            self.candidates.update(done.post_ids, done.embeddings, done.version)
