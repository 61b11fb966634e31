"""The HTTP API's validation and error paths, on a stand-in daemon (no servers)."""

from __future__ import annotations

from types import SimpleNamespace

import redis
from fastapi.testclient import TestClient

from daemon.api import create_app
from daemon.config import Settings
from daemon.metrics import Metrics


def client(suggest=lambda text, k, user: [("pasta", 1.0, True)][:k], fail_store=False,  # type: ignore[no-untyped-def]
           in_flight=None):
    def post(post_id: str):  # type: ignore[no-untyped-def]
        if fail_store:
            raise redis.ConnectionError("down")
        return None

    daemon = SimpleNamespace(
        settings=Settings(max_body_bytes=1000, max_k=50), metrics=Metrics(),
        scorer=SimpleNamespace(suggest_many=lambda requests: [suggest(*r) for r in requests]),
        hub=SimpleNamespace(version=3),
        store=SimpleNamespace(post=post), exposition=lambda: b"",
        readiness_problems=lambda: ["kafka unreachable"], in_flight=in_flight)
    return TestClient(create_app(daemon))  # type: ignore[arg-type]


def test_suggest_answers_and_validates():
    c = client()
    ok = c.post("/v1/suggest", json={"text": "garlic", "k": 1})
    assert ok.status_code == 200 and ok.json() == {
        "tags": [{"tag": "pasta", "score": 1.0, "known": True}], "model_version": 3}
    assert c.post("/v1/suggest", json={"text": "x", "k": 51}).json() == {"error": "k: at most 50"}
    form = c.post("/v1/suggest", content=b'{"text": "garlic"}',
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200  # `curl -d` without a content type still works


def test_oversize_bodies_are_refused_with_or_without_content_length():
    c = client()
    big = b'{"text": "' + b"a" * 2000 + b'"}'
    assert c.post("/v1/suggest", content=big).status_code == 413

    def chunks():  # no Content-Length: chunked transfer
        yield b'{"text": "'
        for _ in range(20):
            yield b"a" * 100
        yield b'"}'
    r = c.post("/v1/suggest", content=chunks())
    assert r.status_code == 413 and "error" in r.json()

    def small():
        yield b'{"text": "garlic", '
        yield b'"k": 1}'
    assert c.post("/v1/suggest", content=small()).status_code == 200


def test_redis_down_is_a_503_with_a_json_error_and_readiness_says_why():
    c = client(fail_store=True)
    r = c.get("/v1/posts/p1")
    assert r.status_code == 503 and "error" in r.json()
    ready = c.get("/readyz")
    assert ready.status_code == 503 and "kafka" in ready.json()["error"]
    assert c.get("/livez").status_code == 200


def test_bearer_token_guards_the_api_and_admin_routes():
    from dataclasses import replace

    open_client = client()
    assert open_client.post("/admin/checkpoint").status_code == 403  # no token: admin is off
    daemon_settings = replace(Settings(max_body_bytes=1000, max_k=50), api_token="s3cret")
    guarded = TestClient(create_app(SimpleNamespace(
        settings=daemon_settings, metrics=Metrics(),
        scorer=SimpleNamespace(suggest_many=lambda requests: [[] for _ in requests]),
        hub=SimpleNamespace(version=1),
        store=None, trains=False, exposition=lambda: b"",
        readiness_problems=lambda: [])))  # type: ignore[arg-type]
    body = {"text": "garlic"}
    assert guarded.post("/v1/suggest", json=body).status_code == 401
    wrong = guarded.post("/v1/suggest", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]
    ok = guarded.post("/v1/suggest", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert guarded.get("/livez").status_code == 200  # probes stay open
    assert guarded.post("/admin/checkpoint").status_code == 401
    admin = guarded.post("/admin/checkpoint", headers={"Authorization": "Bearer s3cret"})
    assert admin.status_code == 409  # authorised; this stand-in does not train
