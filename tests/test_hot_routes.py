"""The hot routes' plain path (daemon.hot_routes): the same answers as FastAPI's routes, and
everything not plainly valid left to FastAPI's validation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from daemon.api import create_app
from daemon.config import Settings
from daemon.feed import FeedItem
from daemon.hot_routes import plain_feed, plain_suggest
from daemon.metrics import Metrics
from tests.streams import metric


def backend(fail: bool = False):  # type: ignore[no-untyped-def]
    calls: list[tuple] = []

    def suggest(text, k, user):  # type: ignore[no-untyped-def]
        calls.append(("suggest", text, k, user))
        if fail:
            raise redis.ConnectionError("down")
        return [("pasta", 1.5, True), ("garlic", 0.25, True)][:k]

    def feed(user, k):  # type: ignore[no-untyped-def]
        calls.append(("feed", user, k))
        return [FeedItem("p1", 0.5)][:k], False

    b = SimpleNamespace(settings=Settings(max_k=50), metrics=Metrics(),
                        scorer=SimpleNamespace(suggest=suggest, suggest_many=lambda requests: [
                            b.scorer.suggest(*r) for r in requests]),
                        feeds=SimpleNamespace(feed=feed), hub=SimpleNamespace(version=7),
                        store=None, trains=False, exposition=lambda: b"",
                        readiness_problems=lambda: [])
    return TestClient(create_app(b)), calls, b  # type: ignore[arg-type]


@pytest.mark.parametrize(("body", "plain"), [
    (b'{"text": "garlic"}', ("garlic", 10, None)),
    (b'{"text": "garlic", "k": 3, "user_id": "u1"}', ("garlic", 3, "u1")),
    (b'{"text": "garlic", "user_id": null}', ("garlic", 10, None)),
    (b'{"text": "garlic", "k": "3"}', None),  # pydantic coerces: FastAPI's to decide
    (b'{"text": "garlic", "k": true}', None),
    (b'{"text": "garlic", "k": 3.0}', None),
    (b'{"text": "garlic", "k": 51}', None),  # over max_k
    (b'{"text": "garlic", "k": 0}', None),
    (b'{"text": "garlic", "user_id": ""}', None),
    (b'{"text": "garlic", "extra": 1}', None),
    (b'{"text": 5}', None),
    (b'["garlic"]', None),
    (b'{"text": NaN}', None),
    (b'not json', None),
])
def test_only_plainly_valid_suggest_bodies_take_the_plain_path(body, plain):
    assert plain_suggest(body, max_k=50) == plain


@pytest.mark.parametrize(("path", "query", "plain"), [
    ("/v1/feed/u1", b"", ("u1", 20)),
    ("/v1/feed/u1", b"k=5", ("u1", 5)),
    ("/v1/feed/u%201", b"k=%35", ("u%201", 5)),  # the path as ASGI gives it (decoded)
    ("/v1/feed/u1", b"k=0", None),
    ("/v1/feed/u1", b"k=51", None),
    ("/v1/feed/u1", b"k=five", None),
    ("/v1/feed/u1", b"k=5&k=6", None),
    ("/v1/feed/u1", b"limit=5", None),
    ("/v1/feed/", b"", None),
    ("/v1/feed/a/b", b"", None),
    ("/v1/feed/" + "x" * 257, b"", None),
])
def test_only_plainly_valid_feed_requests_take_the_plain_path(path, query, plain):
    assert plain_feed(path, query, max_k=50) == plain


def test_plain_and_validated_requests_get_the_same_answers_and_metrics():
    client, calls, b = backend()
    plain = client.post("/v1/suggest", json={"text": "garlic", "k": 2})
    coerced = client.post("/v1/suggest", json={"text": "garlic", "k": "2"})  # via FastAPI
    assert plain.status_code == coerced.status_code == 200
    assert plain.json() == coerced.json() == {
        "tags": [{"tag": "pasta", "score": 1.5, "known": True},
                 {"tag": "garlic", "score": 0.25, "known": True}],
        "model_version": 7}
    assert plain.headers["content-type"] == coerced.headers["content-type"]
    assert calls == [("suggest", "garlic", 2, None)] * 2
    feed = client.get("/v1/feed/u1?k=1")
    assert feed.json() == {"user_id": "u1", "items": [{"post_id": "p1", "score": 0.5}],
                           "model_version": 7, "cold_start": False}
    assert client.get("/v1/feed/u1?k=1&other=2").json() == feed.json()  # via FastAPI
    exposed = generate_latest(b.metrics.registry).decode()
    assert metric(exposed, "tagspace_api_request_seconds_count", route="/v1/suggest",
                  status="200") == 2
    assert metric(exposed, "tagspace_api_request_seconds_count", route="/v1/feed/{user_id}",
                  status="200") == 2


def test_invalid_requests_still_get_fastapis_errors_and_redis_down_a_503():
    client, calls, _ = backend()
    r = client.post("/v1/suggest", json={"text": "garlic", "k": "many"})
    assert r.status_code == 422 and "k" in r.json()["error"]
    assert client.post("/v1/suggest", json={"text": "garlic", "k": 51}).json() == {
        "error": "k: at most 50"}
    assert client.get("/v1/feed/u1?k=0").status_code == 422
    assert calls == []
    down, _, _ = backend(fail=True)
    r = down.post("/v1/suggest", json={"text": "garlic"})
    assert r.status_code == 503 and r.json() == {"error": "state store unavailable, retry later"}


def test_after_a_redis_error_plain_requests_are_answered_on_threads():
    import threading

    client, _, b = backend()
    loop_thread: list[str] = []

    def suggest(text, k, user):  # type: ignore[no-untyped-def]
        loop_thread.append(threading.current_thread().name)
        if len(loop_thread) == 1:
            raise redis.ConnectionError("down")
        return [("pasta", 1.0, True)]
    b.scorer.suggest = suggest
    assert client.post("/v1/suggest", json={"text": "x"}).status_code == 200  # FastAPI's retry
    assert client.post("/v1/suggest", json={"text": "x"}).status_code == 200
    first, retried, later = loop_thread
    assert first != later  # on the event loop, then on a worker thread of the pool
