"""The daemon's FeedRanker without servers: max cosine over the history, exclusions, cold start."""

from types import SimpleNamespace

import numpy as np

from daemon.candidates import CandidateView
from daemon.feed import FeedRanker


class FeedStore:
    def __init__(self, seen=(), history=(), popular=None):
        self._seen, self._history, self._popular = set(seen), list(history), popular or {}

    def seen(self, user_id):
        return self._seen

    def history(self, user_id, limit):
        return self._history[:limit]

    def posts(self, post_ids, with_tokens=False):
        return [self.stored[p] for p in post_ids]

    def most_popular(self, limit):
        return self._popular


def feed_scorer(store, vectors, authors):
    ids = [f"c{i}" for i in range(len(vectors))]
    codes = {a: i for i, a in enumerate(sorted(set(authors)))}
    view = CandidateView(ids, np.array([codes[a] for a in authors], np.int64),
                         np.full(len(ids), 1e9), np.asarray(vectors, np.float32),
                         {p: i for i, p in enumerate(ids)}, codes)
    candidates = SimpleNamespace(snapshot=lambda: view)
    hub = SimpleNamespace(version=1)
    return FeedRanker(hub, store, candidates, feed_history=10)


def test_feed_ranks_by_max_cosine_and_skips_own_and_seen_posts():
    from daemon.store import StoredPost

    vectors = [[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, 0.8]]
    authors = ["a", "b", "me", "b", "b"]
    store = FeedStore(seen={"c0"}, history=["h"])
    store.stored = {"h": StoredPost("h", "x", 0.0, [], [], np.array([1.0, 0.0], np.float32), 1)}
    items, cold = feed_scorer(store, vectors, authors).feed("me", k=10)
    assert not cold
    # c0 seen, c2 the user's own; the rest by cosine to the one history post (1, 0)
    assert [i.post_id for i in items] == ["c1", "c4", "c3"]
    np.testing.assert_allclose([i.score for i in items], [0.8, 0.6, -1.0], atol=1e-6)


def test_feed_without_history_is_a_cold_start_by_popularity():
    vectors = [[1, 0], [0, 1], [1, 1]]
    store = FeedStore(popular={"c2": 50.0, "c1": 3.0})
    items, cold = feed_scorer(store, vectors, ["a", "b", "c"]).feed("new", k=2)
    assert cold and [i.post_id for i in items] == ["c2", "c1"]


