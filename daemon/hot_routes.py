"""Suggest and feed answered straight from ASGI when the request is the plain case.

A sampling profile of the serving process at 100 + 100 requests/s (py-spy, docs/PERFORMANCE.md)
had 62% of its GIL time in the event loop: FastAPI's routing, dependency solving, pydantic
validation and the middleware stack, about 1.7 ms a request, against 0.5-1.5 ms of scoring. So
the two hot routes are parsed here, under the ``Gate`` (token, body size and latency metric
still apply): a request that is well formed by a check stricter than pydantic's (JSON types
exactly as documented, no coercion) is answered by the same functions as the FastAPI routes;
anything else (a coercible or invalid value, an unknown field, an error while answering) goes
on to FastAPI, which validates it, answers it or says why not. The OpenAPI document is
FastAPI's, unchanged.

The plain requests are answered on the event loop's thread itself: in the serving process
nothing else needs the loop for long, and a hand-off to a worker thread and back costs two GIL
switches, each up to the 5 ms switch interval when another thread holds the GIL (measured, one
run each: p50 8.5 ms and p99 105 ms at 100 + 100 requests/s on threads, 3.6 ms and 14.5 ms
inline; docs/PERFORMANCE.md has the later runs). Suggestions waiting together are answered
together (``daemon.batching``: one encode, one tag product, one Redis round trip); feeds one
after the other. The one blocking call is the request's (or the batch's) Redis round trip;
after a Redis error the answers go to the thread pool for ``REDIS_TROUBLE_S``, so a Redis that
hangs holds the loop (its ``/livez`` and ``/metrics``) for at most one socket timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio.to_thread
import orjson
import redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.batching import MAX_BATCH, Batcher
from daemon.records import MAX_ID_CHARS, printable

if TYPE_CHECKING:
    from daemon.api import Backend

MAX_TEXT_CHARS = 5000
REDIS_TROUBLE_S = 10.0  # after a Redis error, answers wait for Redis on threads this long
SUGGEST_FIELDS = frozenset({"text", "k", "user_id"})
FEED_PREFIX = "/v1/feed/"
SUGGEST_BATCH_TAG_SCORES = 160_000  # a batch's tags x requests: 8 at 20k tags, 1 from 80k on


class RouteName:
    """What the Gate reads as the route of a request (``scope["route"].path``)."""

    def __init__(self, path: str):
        self.path = path


SUGGEST, FEED = RouteName("/v1/suggest"), RouteName("/v1/feed/{user_id}")


def suggest_answer(backend: Backend, text: str, k: int, user_id: str | None) -> dict[str, Any]:
    return suggest_answers(backend, [(text, k, user_id)])[0]


def suggest_answers(backend: Backend, requests: Sequence[tuple[str, int, str | None]]
                    ) -> list[dict[str, Any]]:
    suggestions = backend.scorer.suggest_many(requests)
    version = int(backend.hub.version)
    return [{"tags": [{"tag": t, "score": float(sc), "known": known} for t, sc, known in tags],
             "model_version": version} for tags in suggestions]


def suggest_batch_limit(backend: Backend) -> int:
    """Suggestions answered by one call: at most ``SUGGEST_BATCH_TAG_SCORES`` tag scores; 1
    (no batching: each answered at once, as before) from 80k tags on.

    Every request of a batch waits for all of it, and what a batch saves is mostly the reads of
    the tag table, which its product (a GEMM of a few rows) amortizes less as the table grows.
    At 19k tags batches cut both routes' p99 (docs/PERFORMANCE.md); at 100k the synthetic
    bench's runs spread too widely to show a gain, so that scale answers as it did before."""
    tags = len(backend.hub.tagger.active_tags().rows)
    return max(1, min(MAX_BATCH, SUGGEST_BATCH_TAG_SCORES // max(tags, 1)))


def feed_answer(backend: Backend, user_id: str, k: int) -> dict[str, Any]:
    items, cold = backend.feeds.feed(user_id, k)
    return {"user_id": user_id,
            "items": [{"post_id": i.post_id, "score": float(i.score)} for i in items],
            "model_version": int(backend.hub.version), "cold_start": bool(cold)}


def plain_suggest(body: bytes, max_k: int) -> tuple[str, int, str | None] | None:
    """(text, k, user_id) of a suggest body that is plainly valid; None: FastAPI decides."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict or not request.keys() <= SUGGEST_FIELDS:
        return None
    text, k, user_id = request.get("text"), request.get("k", 10), request.get("user_id")
    if type(text) is not str or len(text) > MAX_TEXT_CHARS:
        return None
    if type(k) is not int or not 1 <= k <= min(1000, max_k):
        return None
    if user_id is not None and (type(user_id) is not str or
                                not 1 <= len(user_id) <= MAX_ID_CHARS or
                                not printable(user_id)):
        return None
    return text, k, user_id


def plain_feed(path: str, query: bytes, max_k: int) -> tuple[str, int] | None:
    """(user_id, k) of a feed request that is plainly valid; None: FastAPI decides."""
    user_id = path[len(FEED_PREFIX):]
    if not user_id or "/" in user_id or len(user_id) > MAX_ID_CHARS or \
            not printable(user_id):
        return None
    k = 20
    if query:
        name, _, value = unquote(query.decode("latin-1")).partition("=")
        if name != "k" or not value.isascii() or not value.isdigit() or len(value) > 4:
            return None
        k = int(value)
    if not 1 <= k <= min(1000, max_k):
        return None
    return user_id, k


class HotRoutes:
    """ASGI middleware: the plain suggest and feed requests, answered without FastAPI."""

    def __init__(self, app: ASGIApp, backend: Backend):
        self.app, self.backend = app, backend
        self._threads_until = 0.0  # answer on the thread pool until then (Redis trouble)
        self.suggestions: Batcher[tuple[str, int, str | None], dict[str, Any]] = Batcher(
            lambda requests: suggest_answers(backend, requests),
            max_batch=lambda: suggest_batch_limit(backend),
            on_batch=backend.metrics.suggest_batch.observe)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            max_k = self.backend.settings.max_k
            if method == "POST" and path == "/v1/suggest":
                body, receive = await _read_body(receive)
                args = plain_suggest(body, max_k) if body is not None else None
                if args is not None and await self._answer(
                        scope, send, SUGGEST, suggest_answer, *args):
                    return
            elif method == "GET" and path.startswith(FEED_PREFIX):
                feed_args = plain_feed(path, scope.get("query_string", b""), max_k)
                if feed_args is not None and await self._answer(
                        scope, send, FEED, feed_answer, *feed_args):
                    return
        await self.app(scope, receive, send)

    def _batching(self) -> bool:
        if getattr(self.backend.hub, "tagger", None) is None:  # no model yet (or a stand-in)
            return False
        return suggest_batch_limit(self.backend) > 1

    async def _answer(self, scope: Scope, send: Send, route: RouteName,
                      answer: Callable[..., dict[str, Any]], *args: Any) -> bool:
        """Answer; False (nothing sent) when answering raised: FastAPI then answers the
        request again and turns the error into its response (503 for Redis, ...)."""
        try:
            if time.monotonic() < self._threads_until:
                content = await anyio.to_thread.run_sync(answer, self.backend, *args)
            elif answer is suggest_answer and self._batching():
                content = await self.suggestions.submit(args)  # type: ignore[arg-type]
            else:
                content = answer(self.backend, *args)
        except Exception as e:
            if isinstance(e, redis.RedisError | OSError):
                self._threads_until = time.monotonic() + REDIS_TROUBLE_S
            return False
        scope["route"] = route
        payload = orjson.dumps(content)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return True


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body (the Gate has bounded its size) and a receive that gives it again."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, replay_message(message, receive)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, replay_message({"type": "http.request", "body": body, "more_body": False},
                                 receive)


def replay_message(first: Message, receive: Receive) -> Receive:
    """A receive that gives ``first`` once, then whatever the client sends next."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return first

    return replay
