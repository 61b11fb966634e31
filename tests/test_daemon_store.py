"""The Redis store against a real Redis: idempotent writes, retries, caps, key safety."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from daemon.records import Interaction
from daemon.store import Store
from tagspace.dataset import Post

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url):
    s = Store(redis.Redis.from_url(redis_url), f"s{uuid.uuid4().hex[:8]}", history_size=3,
              seen_size=4)
    yield s
    s.clear()


def post(pid: str, user: str = "u", tags=("a",)) -> tuple[Post, np.ndarray]:
    return Post(pid, user, 1.7e9, ("w",), tuple(tags)), np.ones(4, np.float32)


def like(eid: str, user: str, pid: str, ts: float = 1.7e9, kind: str = "like") -> Interaction:
    return Interaction(eid, user, pid, kind, ts)


def test_replays_change_nothing_but_a_retry_of_the_same_write_counts_as_new(store):
    first = store.write([post("p1"), post("p2"), post("p1")], 1, [like("e1", "v", "p1")], "w1")
    assert first.post_is_new == [True, True, False]  # p1 twice in one batch: once
    assert first.interaction_is_new == [True]
    retry = store.write([post("p1")], 1, [like("e1", "v", "p1")], "w1")  # the same write again
    assert retry.post_is_new == [True] and retry.interaction_is_new == [True]
    replay = store.write([post("p1")], 1, [like("e1", "v", "p1")], "w2")  # a later redelivery
    assert replay.post_is_new == [False] and replay.interaction_is_new == [False]
    assert store.r.hget(store.tags_key, "a") == b"2"  # p1 and p2, each counted once
    assert store.popularity_of("p1") == 1.0


def test_history_is_newest_first_deduplicated_and_capped(store):
    events = [like(f"e{i}", "v", f"p{i % 5}", ts=1.7e9 + i) for i in range(7)]
    store.write([], 1, events)
    assert store.history("v", 10) == ["p1", "p0", "p4"]  # newest first, 3 kept
    store.write([], 1, [like("h1", "v", "p9", 1.8e9, "hide"), like("x", "v", "p8", 1.8e9, "view")])
    assert "p9" in store.seen("v") and "p8" not in store.seen("v")
    assert len(store.seen("v")) == 4 and "p9" not in store.history("v", 10)


def test_ids_cannot_reach_other_keys(store):
    sneaky = "x:hist:v"  # a post id shaped like another key's suffix
    store.write([post(sneaky, user="v:seen")], 1, [like("e:1", "v", sneaky)])
    assert store.post(sneaky).user_id == "v:seen"
    assert store.history("v", 5) == [sneaky]
    assert store.r.type(store.post_key(sneaky)) == b"hash"
    assert not store.r.exists(store.history_key("x"))


def test_embeddings_are_replaced_only_by_newer_versions(store):
    store.write([post("p1")], 3, [])
    assert store.set_embeddings([("p1", np.zeros(4))], 2) == 0
    assert store.set_embeddings([("p1", np.zeros(4))], 4) == 1
    stored = store.post("p1")
    assert stored.version == 4 and not stored.embedding.any()


def test_posts_and_user_state_expire(store):
    store.post_ttl_s, store.user_ttl_s = 100, 200
    store.write([post("p1")], 1, [like("e1", "v", "p1")])
    assert 0 < store.r.ttl(store.post_key("p1")) <= 100
    assert 100 < store.r.ttl(store.history_key("v")) <= 200
    assert 100 < store.r.ttl(store.seen_key("v")) <= 200
    assert 100 < store.r.ttl(store.user_tags_key("u")) <= 200


class CountingConnection(redis.Connection):
    """Counts what the client writes to the socket: one packed write per round trip (a
    pipeline or a script is one)."""

    sent = 0

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url):
    s = Store(redis.Redis.from_url(redis_url, connection_class=CountingConnection),
              f"f{uuid.uuid4().hex[:8]}", history_size=50, seen_size=100)
    yield s
    s.clear()


def round_trips(fn):  # type: ignore[no-untyped-def]
    before = CountingConnection.sent
    out = fn()
    return out, CountingConnection.sent - before


def vec(*xs: float) -> np.ndarray:
    return np.asarray(xs, np.float32)


def test_feed_state_reads_seen_history_and_its_posts_in_one_round_trip(counted):
    s = counted
    s.write([(Post("a", "x", 1.7e9, ("w1",), ("t",)), vec(1, 0, 0, 0)),
             (Post("b", "x", 1.7e9, ("w2",), ("t",)), vec(0, 1, 0, 0))], 3, [])
    s.write([(Post("c", "y", 1.7e9, ("w3", "w4"), ()), vec(0, 0, 1, 0))], 2, [])
    s.write([], 1, [like("e1", "v", "a", 1.7e9 + 1), like("e2", "v", "c", 1.7e9 + 2),
                    like("e3", "v", "gone", 1.7e9 + 3), like("e4", "v", "b", 1.7e9 + 4, "hide")])
    s.feed_state("v", 10, 3, 4)  # the first call may load the script (NOSCRIPT)
    state, trips = round_trips(lambda: s.feed_state("v", 10, 3, 4))
    assert trips == 1
    assert sorted(state.seen) == ["a", "b", "c", "gone"] and state.version == 3
    # newest first; "gone" was never stored; a hide is not history
    assert [p.post_id for p in state.history] == ["c", "a"]
    c, a = state.history
    assert c.version == 2 and state.older(c) and not state.older(a)
    assert a.version == 3 and np.array_equal(a.embedding, vec(1, 0, 0, 0))
    assert a.tokens == c.tokens == []  # usable embeddings: no tokens sent
    assert not state.unusable(a, 4) and state.unusable(a, 8)
    other = s.feed_state("v", 8, 3, 8)  # a model of another size: every one unusable
    assert [p.tokens for p in other.history] == [["w3", "w4"], ["w1"]]
    assert [p.post_id for p in s.feed_state("v", 2, 1, 4).history] == ["c"]  # "gone", "c"
    assert s.feed_state("v", 0, 1, 4).history == []
    empty = s.feed_state("nobody", 10, 1, 4)
    assert empty.seen == [] and empty.history == []


def test_a_feed_is_one_round_trip_warm_or_cold(counted):
    from daemon.candidates import CandidateIndex
    from daemon.feed import FeedRanker

    s = counted
    rng = np.random.default_rng(0)
    posts = [(Post(f"p{i}", f"u{i % 5}", 1.7e9 + i, ("w",), ("t",)),
              rng.normal(size=4).astype(np.float32)) for i in range(40)]
    s.write(posts, 1, [like("e1", "v", "p3"), like("e2", "v", "p7")])
    index = CandidateIndex(s, capacity=100, dim=4)
    index.refresh()
    hub = SimpleNamespace(version=1)
    ranker = FeedRanker(hub, s, index, feed_history=10)  # type: ignore[arg-type]
    ranker.feed("v", 5)  # scripts loaded
    (items, cold), trips = round_trips(lambda: ranker.feed("v", 5))
    assert trips == 1 and len(items) == 5 and not cold
    assert not {"p3", "p7"} & {i.post_id for i in items}  # seen: never shown
    exact = ranker.exact_rank(index.snapshot(), np.stack([
        posts[7][1] / np.linalg.norm(posts[7][1]), posts[3][1] / np.linalg.norm(posts[3][1])]),
        np.array([3, 7]), 5, bf16=False)
    assert [i.post_id for i in items] == [i.post_id for i in exact]
    ranker.feed("new", 5)  # cold: the popularity read, then cached for a second
    (items, cold), trips = round_trips(lambda: ranker.feed("new", 5))
    assert cold and trips == 1
    assert {i.post_id for i in items[:2]} == {"p3", "p7"}  # the liked ones first


def test_float16_embeddings_are_written_smaller_and_read_by_every_store(counted):
    """``embedding_dtype="float16"``: 2 bytes a dimension and a tag byte; a store of either
    dtype reads both (a switch of the setting mid-stream leaves older posts readable), a
    feed's script finds them usable at their dimension, and re-embedding writes float16."""
    from daemon.store import decode_embedding, encode_embedding

    half = Store(counted.r, counted.p, embedding_dtype="float16")
    third = np.float32(1 / 3)
    half.write([(Post("h", "x", 1.7e9, ("w1",), ()), vec(third, 0, 0, 1))], 3, [])
    counted.write([(Post("f", "x", 1.7e9, ("w2",), ()), vec(third, 0, 0, 1))], 3, [])
    raw = counted.r.hget(counted.post_key("h"), "emb")
    assert len(raw) == 2 * 4 + 1 and len(counted.r.hget(counted.post_key("f"), "emb")) == 16
    for reader in (counted, half):
        h, f = reader.posts(["h", "f"])
        assert h.embedding.dtype == f.embedding.dtype == np.float32
        assert h.embedding[0] == np.float16(third) and f.embedding[0] == third
    counted.write([], 1, [like("e1", "v", "h", 1.7e9 + 1), like("e2", "v", "f", 1.7e9 + 2)])
    state = half.feed_state("v", 10, 3, 4)
    assert [p.post_id for p in state.history] == ["f", "h"]
    assert all(p.tokens == [] and not state.unusable(p, 4) for p in state.history)
    assert [p.tokens for p in half.feed_state("v", 10, 3, 8).history] == [["w2"], ["w1"]]
    assert half.set_embeddings([("f", vec(0, 1, 0, 0))], 4) == 1
    assert len(counted.r.hget(counted.post_key("f"), "emb")) == 9
    assert np.array_equal(counted.post("f").embedding, vec(0, 1, 0, 0))
    assert np.array_equal(decode_embedding(encode_embedding(vec(1, 2), "float32")), vec(1, 2))
    with pytest.raises(ValueError, match="embedding_dtype"):
        Store(counted.r, counted.p, embedding_dtype="int4")
