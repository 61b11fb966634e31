"""What answers requests: the feed candidates, the suggestion scorer and the feed ranker over
one model view (the hub in the daemon's process, or a serving process's mirror of it), and
their upkeep (new posts into the candidates, stale embeddings refreshed).
"""

from __future__ import annotations

import redis

from daemon.candidates import CandidateIndex
from daemon.config import Settings
from daemon.feed import FeedRanker
from daemon.metrics import Metrics
from daemon.model_hub import ServedModel
from daemon.scorer import Scorer
from daemon.store import Store

REEMBED_BATCH = 256


def connect_store(settings: Settings, metrics: Metrics) -> Store:
    """The Redis state store of these settings, its round trips timed into ``metrics``."""
    s = settings
    client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                  health_check_interval=10)
    return Store(client, s.redis_prefix, history_size=s.history_size, seen_size=s.seen_size,
                 recent_posts=s.recent_posts, event_ttl_s=s.event_ttl_s,
                 post_ttl_s=s.post_ttl_s, user_ttl_s=s.user_ttl_s,
                 observe=metrics.observe_redis)


class Serving:
    def __init__(self, settings: Settings, store: Store, model: ServedModel, metrics: Metrics):
        s = settings
        self.settings, self.store, self.model, self.metrics = s, store, model, metrics
        dim = model.tagger.model.config.dim
        self.candidates = CandidateIndex(store, s.recent_posts, dim,
                                         ann_min_candidates=s.feed_ann_min_candidates)
        self.scorer = Scorer(model, store)
        self.feeds = FeedRanker(model, store, self.candidates, s.feed_history,
                                ann_candidates_per_query=s.feed_ann_candidates_per_query)

    def maintain(self) -> None:
        """One upkeep step: new posts become candidates, then up to the re-embedding budget
        of one ``candidate_refresh_s`` is refreshed. Redis errors propagate."""
        s = self.settings
        self.candidates.refresh()
        self.metrics.feed_candidates.set(len(self.candidates))
        self.reembed(int(s.reembed_rate * s.candidate_refresh_s) + 1)

    def reembed(self, budget: int) -> None:
        """Refresh up to ``budget`` posts embedded by an older model version: the history posts
        feeds found so first, then candidates, newest first."""
        version = self.model.version
        budget = min(budget, REEMBED_BATCH)
        stale = self.feeds.take_stale(budget)
        view = self.candidates.snapshot()  # one view: ids and versions aligned
        if len(stale) < budget and view.versions is not None:
            wanted = set(stale)
            older = (view.versions < version).nonzero()[0][::-1][: budget]
            stale += [p for p in (view.ids[i] for i in older)
                      if p not in wanted][: budget - len(stale)]
        if not stale:
            return
        found = self.store.posts(stale, with_tokens=True)
        gone = [i for i, p in zip(stale, found, strict=True) if p is None]
        if gone:  # evicted or lost in Redis: no longer candidates
            self.candidates.remove(gone)
        stored = [p for p in found if p is not None]
        if not stored:
            return
        embs, version, changed = self.model.reembed(self.store, stored)
        self.metrics.reembedded.inc(changed)
        self.candidates.update([p.post_id for p in stored], embs, version)
