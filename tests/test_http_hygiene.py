"""HTTP hygiene: ids and `k` refused as the Kafka path refuses them, HEAD on GET routes, a client
that hangs up mid-body, and requests that never finish arriving (a real uvicorn server)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from daemon.api import create_app
from daemon.config import Settings
from daemon.embedded import free_port
from daemon.http_server import server_config
from daemon.metrics import Metrics
from tests.streams import wait_until
from tests.test_daemon_api import client


@pytest.mark.parametrize("body", [
    {"text": "garlic", "k": True},
    {"text": "garlic", "k": False},
    {"text": "garlic", "user_id": "u\x001"},
    {"text": "garlic", "user_id": "u\r\n1"},
    {"text": "garlic", "user_id": "\x1b[31mu"},
], ids=["k-true", "k-false", "nul-user", "crlf-user", "escape-user"])
def test_suggest_refuses_booleans_for_k_and_control_characters_in_ids(body):
    r = client().post("/v1/suggest", json=body)
    assert r.status_code == 422, r.text
    assert "error" in r.json()


@pytest.mark.parametrize("path", [
    "/v1/feed/a%00b", "/v1/feed/a%0d%0ab", "/v1/posts/p%00", "/v1/posts/p%0a",
    "/v1/users/u%00/history", "/v1/feed/%ff%fe", "/v1/posts/%c3", "/v1/users/%80/history",
], ids=["feed-nul", "feed-crlf", "post-nul", "post-lf", "history-nul", "feed-bad-utf8",
        "post-cut-utf8", "history-bad-utf8"])
def test_path_ids_with_control_characters_or_invalid_utf8_are_a_422(path):
    r = client().get(path)
    assert r.status_code == 422, r.text
    assert "error" in r.json()


def test_printable_unicode_path_ids_still_reach_the_route():
    assert client().get("/v1/posts/caf%C3%A9").status_code == 404  # unknown, not refused


def test_head_works_on_get_routes():
    c = client()
    live = c.head("/livez")
    assert live.status_code == 200 and live.content == b""
    assert c.head("/v1/posts/nope").status_code == 404
    assert c.head("/readyz").status_code == 503
    assert c.head("/metrics").status_code == 200


class RealServer:
    """The app on a real uvicorn server (the daemon's config) in a thread, on a free port."""

    def __init__(self, request_timeout_s: float):
        self.metrics = Metrics()
        settings = Settings(request_timeout_s=request_timeout_s, max_body_bytes=1000, max_k=50)
        backend = SimpleNamespace(
            settings=settings, metrics=self.metrics,
            scorer=SimpleNamespace(suggest_many=lambda requests: [
                [("pasta", 1.0, True)][:k] for _, k, _ in requests]),
            hub=SimpleNamespace(version=3), store=SimpleNamespace(post=lambda pid: None),
            exposition=lambda: b"", readiness_problems=lambda: [])
        self.port = free_port()
        self.server = uvicorn.Server(server_config(create_app(backend), settings,  # type: ignore[arg-type]
                                                   self.metrics, host="127.0.0.1",
                                                   port=self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RealServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_client_that_hangs_up_mid_body_is_a_counted_debug_line_not_an_error(caplog):
    caplog.set_level(logging.DEBUG)
    with RealServer(request_timeout_s=10) as server:
        head = b"POST /v1/suggest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for framing in (b"Content-Length: 500\r\n\r\n{\"text\": \"gar",
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"tex\r\n"):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(head + framing)
            time.sleep(0.2)
            sock.close()
        wait_until(lambda: server.metrics.api_disconnects._value.get() == 2, 5,
                   "both disconnects counted")
        assert httpx.get(server.url("/livez")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert any("disconnected" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG)


def test_requests_that_never_finish_arriving_are_closed_after_request_timeout_s():
    with RealServer(request_timeout_s=1.0) as server:
        idle = socket.create_connection(("127.0.0.1", server.port))  # sends nothing
        header = socket.create_connection(("127.0.0.1", server.port))
        header.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        body = socket.create_connection(("127.0.0.1", server.port))
        body.sendall(b"POST /v1/suggest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        for s in slow:
            s.sendall(b"GET /li")
        started = time.monotonic()
        for sock in (idle, header, body):
            assert closed_by_peer(sock, 5.0)
        assert all(closed_by_peer(s, 5.0) for s in slow)
        assert time.monotonic() - started < 6.0
        assert server.metrics.api_timeouts._value.get() >= 302
        # a request that arrives in time is answered, and its keep-alive connection is fine
        with httpx.Client() as http:
            assert http.get(server.url("/livez")).status_code == 200
            time.sleep(0.5)
            assert http.get(server.url("/livez")).status_code == 200
        for s in (idle, header, body, *slow):
            s.close()
