"""The Redis store against a real Redis: idempotent writes, retries, caps, key safety."""

from __future__ import annotations

import uuid

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
