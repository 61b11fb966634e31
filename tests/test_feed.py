"""The daemon's FeedRanker without servers: max cosine over the history, exclusions, cold start,
the bf16 scan against float32, the ANN index against the exact scan, re-embedding.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import daemon.feed as feed_module
from daemon.candidates import CandidateIndex, CandidateView
from daemon.feed import BF16_ERROR, FeedRanker
from daemon.feed_index import FeedIndex
from daemon.store import FeedState, StoredPost


class FeedStore:
    """``feed_state`` and ``most_popular`` as the Store answers them, counting the calls."""

    def __init__(self, seen=(), history=(), popular=None):
        self._seen, self._popular = list(seen), popular or {}
        self.history = list(history)  # StoredPost, newest first
        self.calls: list[str] = []

    def feed_state(self, user_id, history_limit, version, dim):
        self.calls.append("feed_state")
        return FeedState(self._seen, self.history[:history_limit], version)

    def most_popular(self, limit):
        self.calls.append("most_popular")
        return self._popular


def stored(post_id, emb, version=1, tokens=()):
    return StoredPost(post_id, "x", 0.0, [], list(tokens), np.asarray(emb, np.float32), version)


def view_of(vectors, authors, ts=None, bf16=True):
    vectors = np.asarray(vectors, np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"c{i}" for i in range(len(vectors))]
    codes = {a: i for i, a in enumerate(sorted(set(authors)))}
    low = torch.from_numpy(vectors).to(torch.bfloat16) if bf16 else None
    return CandidateView(ids, np.array([codes[a] for a in authors], np.int64),
                         np.full(len(ids), 1e9) if ts is None else np.asarray(ts, float),
                         vectors, {p: i for i, p in enumerate(ids)}, codes,
                         np.ones(len(ids), np.int64), np.arange(len(ids), dtype=np.uint64), low)


def ranker(store, view, hub=None, clock=lambda: 1e9, per_query=0):
    candidates = SimpleNamespace(snapshot=lambda: view)
    return FeedRanker(hub or SimpleNamespace(version=1), store, candidates, feed_history=10,
                      clock=clock, ann_candidates_per_query=per_query)


@pytest.mark.parametrize("bf16", [True, False])
def test_feed_ranks_by_max_cosine_and_skips_own_and_seen_posts(bf16):
    vectors = [[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, 0.8]]
    authors = ["a", "b", "me", "b", "b"]
    store = FeedStore(seen={"c0"}, history=[stored("h", [1.0, 0.0])])
    items, cold = ranker(store, view_of(vectors, authors, bf16=bf16)).feed("me", k=10)
    assert not cold
    # c0 seen, c2 the user's own; the rest by cosine to the one history post (1, 0)
    assert [i.post_id for i in items] == ["c1", "c4", "c3"]
    np.testing.assert_allclose([i.score for i in items], [0.8, 0.6, -1.0], atol=1e-6)
    assert store.calls == ["feed_state"]  # one Redis read per request


def test_the_max_is_over_the_whole_history():
    vectors = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    store = FeedStore(history=[stored("h1", [1, 0, 0]), stored("h2", [0, 0, 1])])
    items, _ = ranker(store, view_of(vectors, ["a"] * 4)).feed("me", k=4)
    assert [i.post_id for i in items[:2]] in (["c0", "c2"], ["c2", "c0"])
    np.testing.assert_allclose([i.score for i in items], [1, 1, np.sqrt(0.5), 0], atol=1e-6)


def test_feed_without_history_is_a_cold_start_by_popularity_read_once_a_second():
    now = [1e9]
    store = FeedStore(popular={"c2": 50.0, "c1": 3.0})
    r = ranker(store, view_of([[1, 0], [0, 1], [1, 1]], ["a", "b", "c"]), clock=lambda: now[0])
    items, cold = r.feed("new", k=2)
    assert cold and [i.post_id for i in items] == ["c2", "c1"]
    np.testing.assert_allclose(items[0].score, np.log1p(50.0) + 1.0, rtol=1e-6)
    r.feed("other", k=2)
    assert store.calls == ["feed_state", "most_popular", "feed_state"]  # cached popularity
    now[0] += feed_module.COLD_START_TTL_S
    store._popular = {"c0": 9.0}
    items, _ = r.feed("new", k=1)
    assert store.calls[-2:] == ["feed_state", "most_popular"] and items[0].post_id == "c0"


def test_cold_start_prefers_fresh_posts_and_still_excludes_seen_and_own():
    day = 24 * 3600.0
    view = view_of([[1, 0]] * 4, ["a", "me", "b", "c"], ts=[1e9 - day, 1e9, 1e9 - 3600, 1e9])
    items, cold = ranker(FeedStore(seen=["c3"]), view).feed("me", k=5)
    assert cold and [i.post_id for i in items] == ["c2", "c0"]


def clustered(n, dim, seed, clusters=40):
    """Unit vectors around a few centres, as real post embeddings are (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_bf16_scan_returns_the_float32_ranking_and_scores():
    vectors = clustered(30_000, 64, 0)
    authors = [f"u{i % 500}" for i in range(len(vectors))]
    view = view_of(vectors, authors)
    r = ranker(FeedStore(), view)
    rng = np.random.default_rng(1)
    for h in (1, 10, 50):
        picked = rng.choice(len(vectors), h, replace=False)
        history = vectors[picked]
        excluded = np.concatenate([np.flatnonzero(view.authors == 7), picked])  # own, seen
        low = r.exact_rank(view, history, excluded, 20)
        full = r.exact_rank(view, history, excluded, 20, bf16=False)
        assert [i.post_id for i in low] == [i.post_id for i in full]
        np.testing.assert_allclose([i.score for i in low], [i.score for i in full], atol=1e-5)
        assert not {i.post_id for i in low} & {view.ids[j] for j in excluded}
    assert r.stats.exact_bf16 == 3 and r.stats.bf16_fallbacks == 0


def test_bf16_error_bound_holds_where_rounding_is_worst():
    rng = np.random.default_rng(2)
    # coordinates just off bf16's grid (worst rounding) and near-duplicates of the queries
    x = rng.normal(size=(20_000, 64)) * (1 + 2.0**-9 * rng.choice([-0.99, 0.99], (20_000, 64)))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:50] + 1e-3 * rng.normal(size=(50, 64)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    low = torch.from_numpy(x).to(torch.bfloat16) @ torch.from_numpy(q).to(torch.bfloat16).T
    exact = x.astype(np.float64) @ q.T.astype(np.float64)
    assert np.abs(low.amax(1).float().numpy() - exact.max(1)).max() <= BF16_ERROR


def test_a_flat_score_distribution_falls_back_to_the_float32_scan():
    # every candidate within bf16's error of every other: the pool cannot prove the top k
    rng = np.random.default_rng(3)
    base = np.zeros(16, np.float32)
    base[0] = 1.0
    vectors = base + 1e-3 * rng.normal(size=(2000, 16)).astype(np.float32)
    view = view_of(vectors, ["a"] * 2000)
    r = ranker(FeedStore(), view)
    history = view.vectors[:1]
    low = r.exact_rank(view, history, np.zeros(0, np.int64), 5)
    full = r.exact_rank(view, history, np.zeros(0, np.int64), 5, bf16=False)
    assert r.stats.bf16_fallbacks == 1
    assert [i.post_id for i in low] == [i.post_id for i in full]


def test_k_beyond_the_allowed_posts_returns_them_all():
    view = view_of(clustered(300, 8, 4), ["me"] * 290 + ["x"] * 10)
    items, _ = ranker(FeedStore(history=[stored("h", np.ones(8))]), view).feed("me", k=50)
    assert sorted(i.post_id for i in items) == [f"c{i}" for i in range(290, 300)]


def ann_view(vectors, authors, index=None):
    """A view whose ANN index holds every row (row serials as keys)."""
    view = view_of(vectors, authors)
    if index is None:
        index = FeedIndex(vectors.shape[1], expansion_add=128, expansion_search=128,
                          neighbours=64)
        index.add(view.keys, view.vectors)
    return CandidateView(view.ids, view.authors, view.ts, view.vectors, view.key_of,
                         view.author_code, view.versions, view.keys, view.low, index)


def test_ann_feed_equals_the_exact_feed_where_the_graph_finds_everything():
    vectors = clustered(3000, 32, 5)
    authors = [f"u{i % 60}" for i in range(3000)]
    view = ann_view(vectors, authors)
    r = ranker(FeedStore(), view)
    rng = np.random.default_rng(6)
    for user in (3, 17, 42):
        own = np.flatnonzero(view.authors == view.author_code[f"u{user}"])
        history = view.vectors[own[:10]]  # history: their own posts, excluded from the feed
        excluded = np.concatenate([own, rng.choice(3000, 100)])  # and some seen posts
        approx = r.rank(view, history, excluded, 20)
        exact = r.exact_rank(view, history, excluded, 20, bf16=False)
        assert [i.post_id for i in approx] == [i.post_id for i in exact]
        np.testing.assert_allclose([i.score for i in approx], [i.score for i in exact],
                                   atol=1e-6)
    assert r.stats.ann == 3 and r.stats.ann_fallbacks == 0


def test_a_history_too_long_for_the_candidates_is_scanned_not_searched():
    vectors = clustered(3000, 16, 9)
    view = ann_view(vectors, ["a"] * 3000)
    r = ranker(FeedStore(), view, per_query=300)  # the ANN from 300 candidates per query on
    none = np.zeros(0, np.int64)
    r.rank(view, vectors[:10], none, 5)  # 3000 >= 300 x 10
    assert r.stats.ann == 1 and r.stats.exact_bf16 == 0
    r.rank(view, vectors[:11], none, 5)  # 3000 < 300 x 11
    assert r.stats.ann == 1 and r.stats.exact_bf16 == 1


def test_ann_rows_gone_from_the_view_are_dropped_and_too_few_fall_back_to_the_scan():
    vectors = clustered(500, 16, 7)
    full = ann_view(vectors, ["a"] * 500)
    # a newer view without rows 0..99 (removed, the index not yet told): never returned
    keep = np.arange(100, 500)
    view = CandidateView([full.ids[i] for i in keep], full.authors[keep], full.ts[keep],
                         full.vectors[keep], full.key_of,
                         full.author_code, full.versions[keep], full.keys[keep],
                         full.low[keep], full.ann)
    r = ranker(FeedStore(), view)
    history = full.vectors[:5]  # the removed posts' own neighbourhood
    items = r.rank(view, history, np.zeros(0, np.int64), 10)
    assert all(int(i.post_id[1:]) >= 100 for i in items)
    assert [i.post_id for i in items] == [
        i.post_id for i in r.exact_rank(view, history, np.zeros(0, np.int64), 10, bf16=False)]
    # all excluded but the 5 farthest from the history: the neighbours cannot fill k, the
    # exact scan answers
    far = np.argsort((view.vectors @ history.T).max(axis=1))[:5]
    excluded = np.setdiff1d(np.arange(400), far)
    items = r.rank(view, history, excluded, 10)
    assert r.stats.ann_fallbacks == 1
    assert sorted(i.post_id for i in items) == sorted(view.ids[i] for i in far)


def test_unusable_history_embeddings_are_made_now_older_ones_queued_for_the_background():
    reembedded = []

    def reembed(store, posts):
        reembedded.extend(p.post_id for p in posts)
        return np.array([[0.0, 1.0]] * len(posts), np.float32), 5, len(posts)

    hub = SimpleNamespace(version=5, reembed=reembed)
    history = [stored("old", [1, 0], version=4, tokens=["w"]), stored("new", [1, 0], 5),
               StoredPost("none", "x", 0.0, [], ["w"], None, 5),
               stored("small", [1], version=5, tokens=["w"])]  # another model's size
    view = view_of([[1, 0], [0, 1]], ["a", "b"])
    items, _ = ranker(FeedStore(history=history), view, hub=hub).feed("me", k=2)
    assert reembedded == ["none", "small"]  # "old" is used as stored: (1, 0)
    np.testing.assert_allclose([i.score for i in items], [1.0, 1.0], atol=1e-6)
    r = ranker(FeedStore(history=history), view, hub=hub)
    r.feed("me", k=2)
    assert r.take_stale(10) == ["old"] and r.take_stale(10) == []


def test_buffers_are_reused_across_requests():
    view = view_of(clustered(40_000, 16, 8), ["a"] * 40_000)
    r = ranker(FeedStore(history=[stored("h", np.ones(16))]), view)
    r.feed("me", k=5)
    assert len(r._spare) == 1
    buffers = {key: t.data_ptr() for key, t in r._spare[0]._buffers.items()}
    assert buffers  # the scan's blocks and scores
    r.feed("me", k=5)
    assert len(r._spare) == 1  # one request at a time: one set of buffers, reused
    assert {key: t.data_ptr() for key, t in r._spare[0]._buffers.items()} == buffers


def test_an_empty_index_is_an_empty_cold_feed_without_reading_redis():
    store = FeedStore()
    index = CandidateIndex(store, capacity=10, dim=4)
    r = FeedRanker(SimpleNamespace(version=1), store, index, feed_history=10)
    assert r.feed("me", k=5) == ([], True) and store.calls == []


def test_a_feed_waits_for_one_slice_of_additions_not_for_the_whole_page():
    """The index's lock is phase-fair: a reader waiting while a writer holds it goes in before
    the writer's next slice (it used to wait out all of them: the writer took the lock again
    before the reader woke)."""
    import threading
    import time

    from daemon.feed_index import _SharedLock

    lock, started, slices = _SharedLock(), threading.Event(), []

    def writer() -> None:
        for _ in range(40):
            with lock.exclusive():
                started.set()
                time.sleep(0.01)  # one slice of insertions
                slices.append(time.monotonic())

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait()
    with lock.shared():
        done_before = len(slices)
    thread.join()
    assert done_before <= 3, f"the reader waited for {done_before} of 40 slices"
    assert len(slices) == 40  # and the writer finished
