"""The daemon against a real Tansu broker and a real Redis: exact counts, the API, new hashtags.

One daemon (in this process) ingests 5,000 real posts and 5,000 interactions with invalid and
duplicate records mixed in; the tests below check what it stored, dead-lettered, counted and
serves.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import numpy as np
import pytest

from daemon.records import POSITIVE_KINDS
from daemon.service import Daemon
from tests.streams import (
    cooking_records,
    metric,
    read_topic,
    send,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.integration

BAD_POSTS = [
    b"not json", b"", b"\xff\xfe\xfa", b"[1, 2]", b'"text"', b"null", b"{}",
    b'{"post_id": 5, "user_id": "u", "text": "x"}',
    b'{"post_id": "p", "user_id": "u"}',
    b'{"post_id": "p", "text": "x"}',
    b'{"post_id": "p", "user_id": "u", "text": 7}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "tags": "a"}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": -5}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": NaN}',
    b'{"post_id": "p\\u0000", "user_id": "u", "text": "x"}',
    b'{"post_id": "p", "user_id": "u", "text": ""}',
    b"[" * 100_000,
    json.dumps({"post_id": "big", "user_id": "u", "text": "word " * 200_000}).encode(),
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": "yesterday"}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": 9e99}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": true}',
    b'{"post_id": "", "user_id": "u", "text": "x"}',
    b'{"post_id": "p", "user_id": "u\\n1", "text": "x"}',
    b'{"post_id": "p", "user_id": "u", "text": "a\\u0000b"}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "tags": ["ok\\ud800"]}',
    b'{"post_id": "p", "user_id": "u", "text": "x", "tags": [1, 2]}',
    json.dumps({"post_id": "p", "user_id": "u", "text": "x",
                "tags": [f"t{i}" for i in range(10_000)]}).encode(),
    json.dumps({"post_id": "p" * 300, "user_id": "u", "text": "x"}).encode(),
    b'{"post_id": "p", "user_id": "u", "text": "x", "ts": Infinity}',
    b"\x00\x00\x00",
    b'{"post_id": "p", "user_id": "u", "text": "   "}',
]
BAD_INTERACTIONS = [
    b"nope", b'{"user_id": "u", "post_id": "p"}',
    b'{"user_id": "u", "post_id": "p", "kind": "love"}',
    b'{"user_id": 1, "post_id": "p", "kind": "like"}',
    b'{"user_id": "u", "post_id": "p", "kind": "like", "ts": "yesterday"}',
]


@pytest.fixture(scope="module")
def stream(broker, redis_server, tmp_path_factory):
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = settings_for(broker, redis_url, tmp_path_factory.mktemp("model"))
    rng = random.Random(0)
    posts = cooking_records(5000)
    bad_posts = [BAD_POSTS[i % len(BAD_POSTS)] for i in range(54)]
    replays = rng.sample(posts, 100)  # the same records again: no effect
    conflict = dict(posts[0], text="entirely different words", tags=["other"])
    post_values = [*posts, *replays, *bad_posts]
    rng.shuffle(post_values)
    post_values.append(conflict)  # the same id, other content, later: the first one stays
    events, kinds = [], sorted(POSITIVE_KINDS) + ["view", "hide"]
    for j in range(5000):
        p = posts[rng.randrange(len(posts))]
        events.append({"event_id": f"e{j}", "user_id": f"r{j % 400}", "post_id": p["post_id"],
                       "kind": kinds[j % len(kinds)], "ts": p["ts"] + 10 + j})
    bad_events = [BAD_INTERACTIONS[i % len(BAD_INTERACTIONS)] for i in range(40)]
    event_values = [*events, *events[:50], *bad_events]  # 50 events delivered twice
    rng.shuffle(event_values)

    daemon = Daemon(settings)
    daemon.start()
    try:
        send(broker, settings.posts_topic, post_values)
        send(broker, settings.interactions_topic, event_values)
        total = len(post_values) + len(event_values)

        def consumed() -> float:
            m = daemon.metrics.consumed
            return sum(m.labels(t)._value.get() for t in (settings.posts_topic,
                                                          settings.interactions_topic))
        wait_until(lambda: consumed() >= total, 120, f"{total} records consumed")
        wait_until(lambda: daemon.metrics.commits.labels("ok")._value.get() > 0, 10, "commit")
        base = f"http://{settings.http_addr}"
        wait_until(lambda: metric(httpx.get(f"{base}/metrics").text,
                                  "tagspace_feed_candidates") == len(posts), 20,
                   "feed candidates (in the serving process)")
        yield {"daemon": daemon, "settings": settings, "posts": posts, "events": events,
               "bad_posts": bad_posts, "bad_events": bad_events, "base": base,
               "broker": broker, "post_values": post_values, "event_values": event_values}
    finally:
        daemon.shutdown()
        daemon.store.clear()


def test_every_valid_record_has_exactly_one_effect_and_counters_match(stream):
    d, s = stream["daemon"], stream["settings"]
    r, store = d.redis, d.store
    post_keys = list(r.scan_iter(match=f"{s.redis_prefix}:post:*", count=1000))
    assert len(post_keys) == len(stream["posts"])
    sample = store.posts([p["post_id"] for p in stream["posts"][:200]])
    assert all(p is not None and p.embedding is not None and len(p.embedding) == 32
               for p in sample)
    assert sample[0].user_id == stream["posts"][0]["user_id"]
    assert sample[0].tags == stream["posts"][0]["tags"]  # not the later conflicting content

    positives: dict[str, set[str]] = {}
    for e in stream["events"]:
        if e["kind"] in POSITIVE_KINDS:
            positives.setdefault(e["user_id"], set()).add(e["post_id"])
    for user, liked in positives.items():
        assert set(store.history(user, 1000)) == liked  # one entry per (user, post)
    hidden = {(e["user_id"], e["post_id"]) for e in stream["events"] if e["kind"] == "hide"}
    user, post_id = next(iter(hidden))
    assert post_id in store.seen(user)

    dead = read_topic(stream["broker"], s.dead_letter_topic,
                      len(stream["bad_posts"]) + len(stream["bad_events"]))
    assert len(dead) == len(stream["bad_posts"]) + len(stream["bad_events"])
    letter = json.loads(dead[0])
    assert {"reason", "topic", "partition", "offset", "value"} <= set(letter)

    text = httpx.get(stream["base"] + "/metrics").text
    posts_t, inter_t = s.posts_topic, s.interactions_topic
    assert metric(text, "tagspace_records_consumed_total", topic=posts_t) == \
        len(stream["post_values"])
    assert metric(text, "tagspace_records_consumed_total", topic=inter_t) == \
        len(stream["event_values"])
    assert metric(text, "tagspace_records_dead_lettered_total", topic=posts_t) == \
        len(stream["bad_posts"])
    assert metric(text, "tagspace_records_dead_lettered_total", topic=inter_t) == \
        len(stream["bad_events"])
    assert metric(text, "tagspace_records_applied_total", topic=posts_t) == len(stream["posts"])
    assert metric(text, "tagspace_records_duplicate_total", topic=posts_t) == 101
    assert metric(text, "tagspace_records_applied_total", topic=inter_t) == len(stream["events"])
    assert metric(text, "tagspace_records_duplicate_total", topic=inter_t) == 50
    assert metric(text, "tagspace_records_invalid_total", topic=posts_t,
                  reason="invalid_json") > 0
    assert metric(text, "tagspace_processing_latency_seconds_count") == len(stream["posts"])
    # every new tagged post is trained on (by the training process) or counted by reason
    d = stream["daemon"]
    tagged = sum(1 for p in stream["posts"] if p["tags"])
    registry = d.metrics.registry

    def accounted() -> float:
        skipped = sum(s.value for m in registry.collect()
                      if m.name == "tagspace_training_posts_skipped" for s in m.samples
                      if s.name.endswith("_total"))
        return skipped + (registry.get_sample_value("tagspace_training_examples_total") or 0)
    wait_until(lambda: d.trainer.idle() and accounted() == tagged, 60, "training accounted")
    assert registry.get_sample_value("tagspace_training_examples_total") > 0


def test_suggest_and_its_validation(stream):
    base = stream["base"]
    ok = httpx.post(base + "/v1/suggest", json={"text": "fluffy pancakes batter", "k": 5})
    assert ok.status_code == 200
    body = ok.json()
    assert len(body["tags"]) == 5 and isinstance(body["model_version"], int)
    assert body["tags"][0]["score"] >= body["tags"][-1]["score"]
    assert_personalized_as_the_library_ranks(stream, "a1", "fluffy pancakes batter")
    for bad in ({"text": "x", "k": 0}, {"text": "x", "k": 10_000}, {"k": 3},
                {"text": "x" * 6000}, {"text": "x", "extra": 1}, {"text": 5}):
        r = httpx.post(base + "/v1/suggest", json=bad)
        assert r.status_code == 422 and r.json()["error"], bad
    r = httpx.post(base + "/v1/suggest", content=b"{not json")
    assert r.status_code == 422 and "error" in r.json()
    r = httpx.post(base + "/v1/suggest", content=b"{" + b" " * 70_000 + b"}")
    assert r.status_code == 413 and "error" in r.json()


def assert_personalized_as_the_library_ranks(stream, user: str, text: str) -> None:
    """The served personalized ranking is the one ``evaluate --personalize`` computes for the
    author's stored posts, with the live model once training has gone quiet."""
    from dataclasses import replace

    from tagspace.dataset import Post
    from tagspace.personalize import AuthorProfiles, PersonalizedScorer
    from tagspace.text import parse_post_text

    d = stream["daemon"]
    first = {}
    for record in stream["post_values"]:  # the first record of an id is the one stored
        if isinstance(record, dict):
            first.setdefault(record["post_id"], record)
    authored = [r for r in first.values() if r["user_id"] == user and r["tags"]]
    assert authored, "the author has tagged posts in the stream"
    stored = d.store.authored(user)
    assert sorted(pid for pid, _, _ in stored) == sorted(r["post_id"] for r in authored)
    wait_until(d.trainer.idle, 60, "training queue drained")
    steps = -1
    while steps != d.trainer.steps:  # no step in flight: the model holds still
        steps = d.trainer.steps
        time.sleep(0.5)
    profiles = AuthorProfiles.from_posts(
        Post(pid, user, float(i), tuple(tokens), tuple(tags))
        for i, (pid, tags, tokens) in enumerate(stored))
    personalizer = d.hub.personalizer
    weights = personalizer.weights if personalizer.bow is not None \
        else replace(personalizer.weights, lexical=0.0)  # a fresh model stores no IDF
    library = PersonalizedScorer(d.hub.online.tagger, profiles, weights, personalizer.bow)
    row = library.scores([Post("q", user, None, parse_post_text(text).tokens, ())])[0]
    expected = [d.hub.online.tags.tokens[i] for i in np.argsort(-row, kind="stable")[:10]]
    personal = httpx.post(stream["base"] + "/v1/suggest",
                          json={"text": text, "k": 10, "user_id": user})
    assert personal.status_code == 200
    assert [t["tag"] for t in personal.json()["tags"]] == expected
    content = httpx.post(stream["base"] + "/v1/suggest", json={"text": text, "k": 10})
    assert [t["tag"] for t in content.json()["tags"]] != expected  # the history mattered


def test_feed_excludes_own_and_seen_posts_and_cold_starts(stream):
    d, base = stream["daemon"], stream["base"]
    user = "a7"  # authored posts and, below, gets a history
    liked = [p["post_id"] for p in stream["posts"][10:13]]
    send(stream["broker"], stream["settings"].interactions_topic,
         [{"event_id": f"feed-{p}", "user_id": user, "post_id": p, "kind": "like"}
          for p in liked])
    wait_until(lambda: len(d.store.history(user, 10)) == 3, 20, "history")
    r = httpx.get(f"{base}/v1/feed/{user}", params={"k": 50})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_start"] is False and len(body["items"]) == 50
    own = {p["post_id"] for p in stream["posts"] if p["user_id"] == user}
    shown = {i["post_id"] for i in body["items"]}
    assert not shown & own and not shown & set(liked)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)

    cold = httpx.get(f"{base}/v1/feed/nobody-{time.time()}").json()
    assert cold["cold_start"] is True and len(cold["items"]) == 20
    assert httpx.get(f"{base}/v1/feed/{user}", params={"k": 0}).status_code == 422
    history = httpx.get(f"{base}/v1/users/{user}/history").json()
    assert history["post_ids"][:3] == d.store.history(user, 3)


def test_a_like_before_its_post_is_kept_and_counts_once_the_post_arrives(stream):
    d, base, s = stream["daemon"], stream["base"], stream["settings"]
    user, late = f"early-{time.time()}", f"late-{time.time()}"
    send(stream["broker"], s.interactions_topic,
         [{"event_id": f"early-{late}", "user_id": user, "post_id": late, "kind": "like"}])
    wait_until(lambda: d.store.history(user, 10) == [late], 20, "the like kept in the history")
    assert d.store.post(late) is None  # not stored (yet): the like is kept all the same
    before = httpx.get(f"{base}/v1/feed/{user}").json()
    assert before["cold_start"] is True and len(before["items"]) == 20  # no embedding to use
    assert d.store.popularity_of(late) == 1.0

    text = stream["posts"][20]["text"]
    send(stream["broker"], s.posts_topic, [{"post_id": late, "user_id": "someone", "text": text,
                                            "tags": stream["posts"][20]["tags"]}])
    wait_until(lambda: d.store.post(late) is not None, 20, "the post, later")
    after = httpx.get(f"{base}/v1/feed/{user}").json()
    assert after["cold_start"] is False  # the history post now has its embedding
    assert late not in {i["post_id"] for i in after["items"]}  # liked: never shown back
    assert d.store.popularity_of(late) == 1.0  # the like counted once


def test_posts_health_openapi(stream):
    base, post = stream["base"], stream["posts"][3]
    r = httpx.get(f"{base}/v1/posts/{post['post_id']}")
    assert r.status_code == 200 and r.json()["user_id"] == post["user_id"]
    assert r.json()["tags"] == post["tags"]
    missing = httpx.get(f"{base}/v1/posts/never-seen")
    assert missing.status_code == 404 and "never-seen" in missing.json()["error"]
    assert httpx.get(base + "/livez").status_code == 200
    assert httpx.get(base + "/readyz").status_code == 200
    spec = httpx.get(base + "/openapi.json").json()
    assert {"/v1/suggest", "/v1/feed/{user_id}", "/v1/posts/{post_id}",
            "/v1/users/{user_id}/history"} <= set(spec["paths"])
    text = httpx.get(base + "/metrics").text
    assert 'tagspace_api_request_seconds_count{route="/v1/suggest",status="422"}' in text


def test_a_new_version_re_embeds_recent_posts_at_a_bounded_rate(stream):
    d, s = stream["daemon"], stream["settings"]
    assert d.checkpoint()  # a new version: every stored embedding is now stale
    version = d.hub.version

    def reembedded() -> float:  # counted by the serving process, which re-embeds
        return metric(httpx.get(f"{stream['base']}/metrics").text,
                      "tagspace_reembedded_posts_total")
    before = reembedded()
    time.sleep(2.0)
    done = reembedded() - before
    assert 0 < done <= s.reembed_rate * 2.0 * 1.5  # at most reembed_rate per second
    every = [p["post_id"] for p in stream["posts"]]  # re-embedded newest-arrived first
    refreshed = [p for p in d.store.posts(every) if p is not None and p.version >= version]
    assert len(refreshed) >= min(done, 100)
