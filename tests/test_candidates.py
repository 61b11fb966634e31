"""The feed's in-memory candidate index (daemon/candidates.py): what refresh picks up, the
capacity bound (newest kept), consistent snapshots, re-embedding and removal.

An in-memory store with the two calls the index makes (``arrivals_after``, ``posts``); one test
runs against the real Store on the session's Redis.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
import torch

import daemon.candidates as candidates_module
from daemon.candidates import CandidateIndex, CandidateView
from daemon.store import StoredPost

DIM = 4


class FakeStore:
    """Arrivals as a stream of ("N-0", post id), posts by id (None: expired or never stored)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []
        self.stored: dict[str, StoredPost] = {}
        self.reads: list[str] = []  # the cursors refresh asked from

    def add(self, post_id: str, user: str = "u", ts: float = 0.0, emb=None, version: int = 1,
            store: bool = True) -> None:
        if emb is None:
            rng = np.random.default_rng(abs(hash(post_id)) % 2**32)
            emb = rng.normal(size=DIM).astype(np.float32)
        if store:
            self.stored[post_id] = StoredPost(post_id, user, ts, [], [], emb, version)
        self.arrivals.append((f"{len(self.arrivals) + 1}-0", post_id))

    def arrivals_after(self, cursor: str, limit: int) -> list[tuple[str, str]]:
        self.reads.append(cursor)
        after = int(cursor.split("-")[0])
        return [row for row in self.arrivals if int(row[0].split("-")[0]) > after][:limit]

    def posts(self, post_ids, with_tokens: bool = False):
        return [self.stored.get(p) for p in post_ids]


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def check_consistent(view: CandidateView, index: CandidateIndex | None = None) -> None:
    n = len(view.ids)
    assert view.authors.shape == (n,) and view.ts.shape == (n,)
    assert view.vectors.shape == (n, DIM) and view.vectors.dtype == np.float32
    assert [view.row(p) for p in view.ids] == list(range(n))
    assert view.rows(view.ids).tolist() == list(range(n))
    assert len(set(view.ids)) == n  # no post twice
    if n:
        assert np.allclose(np.linalg.norm(view.vectors, axis=1), 1.0, atol=1e-5)
    if index is not None and index.snapshot() is view:
        assert index.versions.shape == (n,)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def test_refresh_adds_arrivals_in_order_once_then_only_what_arrived_since(store):
    index = CandidateIndex(store, capacity=100, dim=DIM)
    assert len(index) == 0 and index.refresh() == 0
    for i in range(5):
        store.add(f"p{i}", user=f"u{i % 2}", ts=100.0 + i, version=3)
    assert index.refresh() == 5
    assert index.refresh() == 0  # nothing new: nothing added twice
    store.add("p5", user="u0", ts=200.0, version=4)
    assert index.refresh() == 1
    view = index.snapshot()
    check_consistent(view, index)
    assert view.ids == [f"p{i}" for i in range(6)] and len(index) == 6
    assert view.ts.tolist() == [100.0, 101.0, 102.0, 103.0, 104.0, 200.0]
    assert index.versions.tolist() == [3, 3, 3, 3, 3, 4]
    for i, post_id in enumerate(view.ids):  # unit rows of the stored embeddings
        assert np.allclose(view.vectors[i], unit(store.stored[post_id].embedding), atol=1e-6)
    # one code per author, the same for all their posts, decodable through author_code
    assert view.authors.tolist() == [view.author_code[f"u{i % 2}"] for i in range(5)] + [
        view.author_code["u0"]]
    assert view.authors[0] != view.authors[1]
    assert index.refresh() == 0
    assert store.reads[-1] == "6-0"  # the cursor moved past everything read


def test_refresh_pages_through_a_backlog_larger_than_one_fetch(store, monkeypatch):
    monkeypatch.setattr(candidates_module, "FETCH", 3)
    for i in range(10):
        store.add(f"p{i}", ts=float(i))
    index = CandidateIndex(store, capacity=100, dim=DIM)
    assert index.refresh() == 10  # one call drains the backlog, page by page
    assert index.snapshot().ids == [f"p{i}" for i in range(10)]
    assert store.reads == ["0", "3-0", "6-0", "9-0"]
    store.add("p10", ts=10.0)
    assert index.refresh() == 1 and store.reads[-1] == "10-0"


def test_posts_gone_without_embedding_or_of_another_dimension_are_skipped_not_retried(store):
    store.add("expired", store=False)  # in the stream, no longer in Redis
    store.add("no-emb", emb=np.zeros(0, np.float32))
    store.stored["no-emb"] = StoredPost("no-emb", "u", 0.0, [], [], None, 1)
    store.add("old-dim", emb=np.ones(DIM + 2, np.float32))  # a model of another size
    store.add("ok", ts=1.0)
    index = CandidateIndex(store, capacity=10, dim=DIM)
    assert index.refresh() == 1
    assert index.snapshot().ids == ["ok"]
    store.stored["expired"] = StoredPost("expired", "u", 0.0, [], [], np.ones(DIM), 1)
    assert index.refresh() == 0  # the cursor is past them: read once
    check_consistent(index.snapshot(), index)


def test_a_post_arriving_again_is_not_added_twice(store):
    index = CandidateIndex(store, capacity=10, dim=DIM)
    store.add("p1", ts=1.0)
    store.add("p2", ts=2.0)
    assert index.refresh() == 2
    store.add("p1", ts=1.0)  # the stream names it again (a re-write after its key expired)
    store.add("p3", ts=3.0)
    assert index.refresh() == 1
    assert index.snapshot().ids == ["p1", "p2", "p3"]


def test_capacity_keeps_the_newest_by_timestamp_in_arrival_order(store):
    index = CandidateIndex(store, capacity=4, dim=DIM)
    # arrival order is not time order: a late old post must not push out newer ones
    for post_id, ts, user in [("a", 10.0, "x"), ("b", 50.0, "y"), ("c", 30.0, "x"),
                              ("d", 40.0, "z"), ("e", 20.0, "y"), ("f", 60.0, "z")]:
        store.add(post_id, user=user, ts=ts, version=int(ts))
    index.refresh()
    view = index.snapshot()
    check_consistent(view, index)
    assert len(index) == 4
    assert view.ids == ["b", "c", "d", "f"]  # newest 4 (50, 30, 40, 60), still in arrival order
    assert view.ts.tolist() == [50.0, 30.0, 40.0, 60.0]
    assert index.versions.tolist() == [50, 30, 40, 60]  # rows stay aligned after the trim
    assert view.authors.tolist() == [view.author_code[u] for u in ("y", "x", "z", "z")]
    for i, post_id in enumerate(view.ids):
        assert np.allclose(view.vectors[i], unit(store.stored[post_id].embedding), atol=1e-6)
    store.add("old", ts=1.0)  # older than everything kept: evicted at once
    store.add("g", ts=70.0)  # the oldest kept ("c", 30) goes
    index.refresh()
    assert index.snapshot().ids == ["b", "d", "f", "g"] and len(index) == 4
    check_consistent(index.snapshot(), index)


def test_rows_stay_exact_through_evictions_and_a_post_that_comes_back(store, monkeypatch):
    """Row lookups go through keys shared by the views: an evicted post is in no later view,
    one that arrives again gets a row anew while older snapshots keep theirs, and the shared
    lookup stays bounded however many posts pass through."""
    monkeypatch.setattr(candidates_module, "FETCH", 3)
    index = CandidateIndex(store, capacity=5, dim=DIM)
    for i in range(5):
        store.add(f"p{i}", ts=float(i))
    index.refresh()
    first = index.snapshot()
    for i in range(5, 60):
        store.add(f"p{i}", ts=float(i))
        index.refresh()
        view = index.snapshot()
        check_consistent(view, index)
        assert view.ids == [f"p{j}" for j in range(i - 4, i + 1)]
        assert view.row("p0") is None and view.rows(["p0", f"p{i}"]).tolist() == [4]
        assert len(view.key_of) <= 2 * 5 + 3 + 1
    assert [first.row(f"p{i}") for i in range(5)] == list(range(5))  # the old view unchanged
    store.add("p0", ts=100.0)  # p0 written again after its eviction: the newest now
    index.refresh()
    view = index.snapshot()
    check_consistent(view, index)
    assert view.ids[-1] == "p0" and view.row("p0") == 4
    assert first.row("p0") == 0 and first.rows(["p3", "p0", "gone"]).tolist() == [3, 0]


def test_a_snapshot_never_changes_under_a_reader(store):
    index = CandidateIndex(store, capacity=3, dim=DIM)
    for i in range(3):
        store.add(f"p{i}", ts=float(i))
    index.refresh()
    before = index.snapshot()
    ids, ts, vectors = list(before.ids), before.ts.copy(), before.vectors.copy()
    for i in range(3, 6):
        store.add(f"p{i}", ts=float(i))
    index.refresh()  # trims past capacity
    index.remove(["p4"])
    assert before.ids == ids and np.array_equal(before.ts, ts)
    assert np.array_equal(before.vectors, vectors) and before.row("p0") == 0
    assert index.snapshot() is not before
    assert index.snapshot().ids == ["p3", "p5"]


def test_snapshots_taken_while_refreshing_and_removing_are_always_consistent(store):
    index = CandidateIndex(store, capacity=50, dim=DIM)
    stop, problems, removed = threading.Event(), [], set()

    def read() -> None:
        while not stop.is_set():
            try:
                check_consistent(index.snapshot())
            except AssertionError as e:  # pragma: no cover - the failure is reported below
                problems.append(e)
                return
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            store.add(f"p{i}", user=f"u{i % 7}", ts=float(i))
            if i % 10 == 9:
                index.refresh()
            if i % 25 == 24:
                gone = index.snapshot().ids[::9]
                index.remove(gone)
                removed.update(gone)
    finally:
        stop.set()
        reader.join(10)
    assert not problems, problems[0]
    assert index.refresh() == 0
    ids = index.snapshot().ids
    assert len(ids) <= 50 and not removed & set(ids)
    assert ids == sorted(ids, key=lambda p: int(p[1:]))  # arrival order
    assert [p for p in ids if int(p[1:]) >= 290] == [f"p{i}" for i in range(290, 300)
                                                     if f"p{i}" not in removed]


def test_update_replaces_known_vectors_normalized_and_ignores_unknown_ids(store):
    index = CandidateIndex(store, capacity=10, dim=DIM)
    for i in range(3):
        store.add(f"p{i}", ts=float(i), version=1)
    index.refresh()
    untouched = index.snapshot().vectors[0].copy()
    index.update(["p2", "gone", "p1"], np.array([[3, 0, 0, 4], [1, 1, 1, 1], [0, 0, 0, 2]],
                                                np.float32), version=7)
    view = index.snapshot()
    assert np.allclose(view.vectors[2], [0.6, 0, 0, 0.8])
    assert np.allclose(view.vectors[1], [0, 0, 0, 1])
    assert np.array_equal(view.vectors[0], untouched)
    assert index.versions.tolist() == [1, 7, 7]
    assert view.ids == ["p0", "p1", "p2"]  # nothing added for the unknown id


def test_remove_drops_posts_and_keeps_rows_aligned(store):
    index = CandidateIndex(store, capacity=10, dim=DIM)
    for i in range(5):
        store.add(f"p{i}", user=f"u{i}", ts=float(i), version=i)
    index.refresh()
    codes = dict(index.snapshot().author_code)
    index.remove(["p1", "p3", "never-there"])
    view = index.snapshot()
    check_consistent(view, index)
    assert view.ids == ["p0", "p2", "p4"] and len(index) == 3
    assert view.ts.tolist() == [0.0, 2.0, 4.0] and index.versions.tolist() == [0, 2, 4]
    assert view.authors.tolist() == [codes["u0"], codes["u2"], codes["u4"]]
    assert np.allclose(view.vectors[1], unit(store.stored["p2"].embedding), atol=1e-6)
    index.update(["p4"], np.array([[1, 0, 0, 0]], np.float32), version=9)  # right row after
    assert np.allclose(index.snapshot().vectors[2], [1, 0, 0, 0])
    assert index.versions.tolist() == [0, 2, 9]
    index.remove([])
    assert index.snapshot().ids == ["p0", "p2", "p4"]


@pytest.mark.integration
def test_refresh_reads_what_the_real_store_wrote(redis_url):
    import redis

    from daemon.store import Store
    from tagspace.dataset import Post

    store = Store(redis.Redis.from_url(redis_url), f"c{uuid.uuid4().hex[:8]}")
    try:
        rng = np.random.default_rng(0)
        embs = rng.normal(size=(5, DIM)).astype(np.float32)
        posts = [(Post(f"p{i}", f"u{i % 2}", 1.7e9 + i, ("w",), ("t",)), embs[i])
                 for i in range(5)]
        store.write(posts[:3], 2, [])
        index = CandidateIndex(store, capacity=4, dim=DIM)
        assert index.refresh() == 3
        store.write(posts[1:], 3, [])  # p1, p2 replayed (not stored again), p3, p4 new
        assert index.refresh() == 2
        view = index.snapshot()
        check_consistent(view, index)
        assert view.ids == ["p1", "p2", "p3", "p4"]  # capacity 4: the oldest (p0) went
        assert index.versions.tolist() == [2, 2, 3, 3]
        assert np.allclose(view.vectors, np.stack([unit(e) for e in embs[1:]]), atol=1e-6)
        assert view.authors[0] == view.authors[2] != view.authors[1]  # u1, u0, u1, u0
    finally:
        store.clear()


def test_a_post_named_twice_in_one_page_is_added_once(store):
    store.add("p1", ts=1.0)
    store.add("p2", ts=2.0)
    store.add("p1", ts=1.0)  # the same page names p1 again
    index = CandidateIndex(store, capacity=10, dim=DIM)
    assert index.refresh() == 2
    view = index.snapshot()
    check_consistent(view, index)
    assert view.ids == ["p1", "p2"]


def ann_keys(index: CandidateIndex) -> set[int]:
    """The keys the ANN index answers for (each row's own vector finds its own key)."""
    ann, view = index.ann, index.snapshot()
    assert ann is not None and view.keys is not None
    assert len(ann) == len(view.ids)
    return {int(k) for k in view.keys if int(k) in ann}


def check_ann_follows(index: CandidateIndex) -> None:
    view = index.snapshot()
    assert view.keys is not None
    assert np.all(np.diff(view.keys.astype(np.int64)) > 0)  # ascending: searchsorted works
    assert ann_keys(index) == {int(k) for k in view.keys}
    ann = index.ann
    assert ann is not None
    for row in range(len(view.ids)):  # the index holds each row's current vector
        assert int(view.keys[row]) in {int(k) for k in ann.search(view.vectors[row], 1)}


def test_the_ann_index_follows_adds_evictions_removals_and_reembedding(store):
    # the bf16 copy forced: by default only CPUs with bf16 units keep one
    index = CandidateIndex(store, capacity=6, dim=DIM, ann_min_candidates=4, bf16=True)
    assert index.ann is not None
    for i in range(3):
        store.add(f"p{i}", ts=float(i))
    index.refresh()
    assert index.snapshot().ann is None  # 3 < 4 rows: feeds scan exactly
    check_ann_follows(index)
    for i in range(3, 9):
        store.add(f"p{i}", ts=float(i))
    store.add("late", ts=-1.0)  # older than everything kept: never in the index
    index.refresh()
    view = index.snapshot()
    assert view.ids == [f"p{i}" for i in range(3, 9)] and view.ann is index.ann
    check_ann_follows(index)
    index.remove(["p4", "p7"])
    assert index.snapshot().ids == ["p3", "p5", "p6", "p8"]
    check_ann_follows(index)
    index.update(["p5", "p5", "gone"], np.array([[0, 1, 0, 0], [0, 0, 3, 4], [1, 0, 0, 0]],
                                                np.float32), version=2)
    view = index.snapshot()
    assert np.allclose(view.vectors[1], [0, 0, 0.6, 0.8])  # the last one given wins
    assert view.low is not None and torch.allclose(view.low[1].float(),
                                                   torch.tensor([0, 0, 0.6, 0.8]), atol=4e-3)
    check_ann_follows(index)
    index.remove(["p3"])  # below the threshold again: feeds scan exactly
    assert index.snapshot().ann is None and len(index.ann) == 3


def test_the_bf16_copy_follows_every_change(store):
    index = CandidateIndex(store, capacity=3, dim=DIM, bf16=True)
    for i in range(5):
        store.add(f"p{i}", ts=float(i))
    index.refresh()
    index.remove(["p3"])
    view = index.snapshot()
    assert view.low is not None and view.low.dtype == torch.bfloat16
    assert torch.allclose(view.low.float(), torch.from_numpy(view.vectors), atol=4e-3)
    assert CandidateIndex(store, capacity=3, dim=DIM, bf16=False).snapshot().low is None
    assert CandidateIndex(store, capacity=3, dim=DIM).ann is None  # below the default switch


def test_feeds_search_the_ann_index_safely_while_it_changes():
    from daemon.feed_index import FeedIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = FeedIndex(8)
    ann.add(np.arange(500, dtype=np.uint64), vectors[:500])
    stop, problems = threading.Event(), []

    def search() -> None:
        while not stop.is_set():
            try:
                keys = ann.search(vectors[rng.integers(0, 3000, 10)])
                assert len(keys) and keys.max() < 3000, keys
            except Exception as e:  # pragma: no cover - the failure is reported below
                problems.append(e)
                return
    readers = [threading.Thread(target=search) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for start in range(500, 3000, 100):  # a sliding window of 500, as evictions make it
            ann.add(np.arange(start, start + 100, dtype=np.uint64), vectors[start:start + 100])
            ann.remove(np.arange(start - 500, start - 400, dtype=np.uint64))
            ann.update(np.arange(start - 50, start, dtype=np.uint64), vectors[:50])
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
    assert not problems, problems[0]
    assert len(ann) == 500 and 2999 in ann and 2499 not in ann


def test_row_buffers_never_move_a_published_row_while_they_grow_and_drop():
    """Views are slices of the buffers: later appends (with and without room), the oldest rows
    dropped in place and a replacement leave every earlier view's rows as they were."""
    from daemon.candidate_rows import MIN_ROOM, RowBuffers

    rng = np.random.default_rng(0)

    def batch(first: int, n: int):  # type: ignore[no-untyped-def]
        keys = np.arange(first, first + n, dtype=np.uint64)
        return (keys.astype(np.int64) % 7, keys.astype(np.float64),
                rng.normal(size=(n, DIM)).astype(np.float32), np.ones(n, np.int64), keys)

    buffers = RowBuffers(DIM, bf16=True)
    buffers.extend(*batch(0, 3))
    first = buffers.live()
    kept = [a.copy() for a in (first.ts, first.vectors, first.keys)]
    buffers.extend(*batch(3, MIN_ROOM + 10))  # past the room: the live rows copied anew
    buffers.extend(*batch(MIN_ROOM + 13, 5))  # within the new room: in place
    grown = buffers.live()
    buffers.drop_first(4)
    dropped = buffers.live()
    for a, b in zip((first.ts, first.vectors, first.keys), kept, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(grown) == MIN_ROOM + 18 and len(dropped) == MIN_ROOM + 14
    np.testing.assert_array_equal(grown.keys, np.arange(MIN_ROOM + 18, dtype=np.uint64))
    np.testing.assert_array_equal(dropped.keys, grown.keys[4:])
    np.testing.assert_array_equal(dropped.low.float().numpy(),  # the bf16 copy follows
                                  torch.from_numpy(dropped.vectors).to(torch.bfloat16).float())
    buffers.replace(dropped.take(np.array([0, 2])))
    assert buffers.live().keys.tolist() == [4, 6] and len(dropped) == MIN_ROOM + 14
