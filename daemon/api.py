"""The HTTP API (``../shared/CONTRACT.md``): suggestions, feeds, posts, histories, health, metrics.

FastAPI validates requests (4xx with ``{"error": ...}``) and serves the OpenAPI document at
``/openapi.json`` (browsable at ``/docs``). Handlers are plain functions: FastAPI runs them on
its thread pool, beside the ingestion and training threads.

Per-request overhead is kept near the work itself: the gate in front of the routes (token,
body size, content type, latency metric) is a plain ASGI middleware (Starlette's
``BaseHTTPMiddleware`` costs ~0.4 ms a request: a task group and a streamed copy of every
response), and the hot routes (suggest, feed) answer with orjson bytes directly, skipping
pydantic's validation of what they built themselves; their ``response_model`` still documents
them in the OpenAPI document.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Protocol
from urllib.parse import unquote_to_bytes

import anyio.to_thread
import orjson
import redis
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.hot_routes import (
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    HotRoutes,
    feed_answer,
    replay_message,
    suggest_answer,
)
from daemon.in_flight import InFlight
from daemon.records import printable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.feed import FeedRanker
    from daemon.metrics import Metrics
    from daemon.model_hub import ServedModel
    from daemon.scorer import Scorer
    from daemon.store import Store


class Backend(Protocol):
    """What the routes serve from: the daemon itself, or its serving process."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def store(self) -> Store: ...

    @property
    def scorer(self) -> Scorer: ...

    @property
    def feeds(self) -> FeedRanker: ...

    @property
    def hub(self) -> ServedModel: ...

    @property
    def trains(self) -> bool: ...

    def exposition(self) -> bytes: ...

    def readiness_problems(self) -> list[str]: ...

    def checkpoint(self) -> bool: ...



def _printable_id(value: str) -> str:
    if not printable(value):
        raise ValueError("control characters (NUL, CR/LF...) are not allowed in ids")
    return value


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read true as 1
        raise ValueError("must be an integer, not a boolean")
    return value


# An id as the Kafka path takes it (daemon.records); invalid UTF-8 is refused by the Gate.
Id = Annotated[str, AfterValidator(_printable_id)]


class SuggestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT_CHARS, description="the post's text")
    k: Annotated[int, BeforeValidator(_not_a_bool)] = Field(
        10, ge=1, le=1000, description="how many tags (at most max_k)")
    user_id: Id | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                               description="the author: their hashtag history personalizes")


class TagScore(BaseModel):
    tag: str
    score: float = Field(description="the model's score; with open_vocab_scorers, the "
                         "probability that the tag is one of the post's hashtags")
    known: bool = Field(description="whether the model has a row for the tag (false: a "
                        "never-seen tag, open_vocab_scorers only)")


class SuggestResponse(BaseModel):
    tags: list[TagScore]
    model_version: int


class FeedItemOut(BaseModel):
    post_id: str
    score: float


class FeedResponse(BaseModel):
    user_id: str
    items: list[FeedItemOut]
    model_version: int
    cold_start: bool


class PostResponse(BaseModel):
    post_id: str
    user_id: str
    ts: float
    tags: list[str]
    model_version: int


class HistoryResponse(BaseModel):
    user_id: str
    post_ids: list[str]


class ErrorResponse(BaseModel):
    error: str


class JSONBytes(JSONResponse):
    """A JSON response serialised by orjson (FastAPI's ORJSONResponse is deprecated)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, message: str) -> JSONResponse:
    return JSONBytes({"error": message}, status_code=status)


class Gate:
    """In front of every route: the bearer token, the body size limit, JSON as the body's
    content type, and the latency metric per route and status. A plain ASGI middleware."""

    def __init__(self, app: ASGIApp, daemon: Backend):
        self.app, self.daemon = app, daemon
        # counted for the trainer, which yields to requests (stand-ins in tests have none)
        self.in_flight: InFlight = getattr(daemon, "in_flight", None) or InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.daemon.settings
        path, method = scope["path"], scope["method"]
        headers = Headers(scope=scope)
        refusal: Response | None = None
        if path.startswith("/admin/") or (s.api_token and path.startswith("/v1/")):
            given = headers.get("authorization", "")
            if not s.api_token:
                refusal = _error(403, "admin routes are disabled: no api_token is configured")
            elif not hmac.compare_digest(given.encode(), f"Bearer {s.api_token}".encode()):
                refusal = JSONBytes({"error": "missing or wrong bearer token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if refusal is None and not _utf8(scope.get("raw_path") or path.encode()):
            refusal = _error(422, "path: not valid UTF-8")
        length = headers.get("content-length")
        too_big = _error(413, f"request body over {s.max_body_bytes} bytes")
        if refusal is None and length is not None and \
                (not length.isdigit() or int(length) > s.max_body_bytes):
            refusal = too_big
        if refusal is None and length is None and method == "POST":
            # chunked: count what arrives, then hand the read body on to the route
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    self._disconnected("unmatched")
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > s.max_body_bytes:
                    refusal = too_big
                    break
                more = message.get("more_body", False)
            else:
                receive = replay_message({"type": "http.request", "body": b"".join(chunks),
                                          "more_body": False}, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if method == "POST" and "json" not in headers.get("content-type", ""):
            # `curl -d '{...}'` says form-urlencoded: the body is read as JSON all the same
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + \
                [(b"content-type", b"application/json")]
        status, body_complete, hung_up = 500, False, False

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_seen() -> Message:
            nonlocal body_complete, hung_up
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_complete = True
            elif message["type"] == "http.disconnect" and not body_complete:
                hung_up = True  # FastAPI answers that with a 400 no one reads
            return message

        start = time.perf_counter()
        self.in_flight.begin()
        try:
            await self.app(scope, receive_seen, send_seen)
        except ClientDisconnect:
            hung_up = True
        finally:
            self.in_flight.end()
            name = getattr(scope.get("route"), "path", "unmatched")
            if hung_up:  # nothing to answer, nothing wrong here: counted, not an error
                status = 499  # nginx's "client closed request"
                self._disconnected(name)
            self.daemon.metrics.api_latency.labels(name, str(status)).observe(
                time.perf_counter() - start)

    def _disconnected(self, route: str) -> None:
        log.debug("client disconnected before its request body was complete (%s)", route)
        self.daemon.metrics.api_disconnects.inc()


def _utf8(raw_path: bytes) -> bool:
    """The path's percent-decoded bytes are UTF-8 (Starlette would replace the rest)."""
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def create_app(daemon: Backend) -> FastAPI:
    s = daemon.settings
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Handlers are sync functions on anyio's thread pool (40 threads by default): on a few
        # cores more threads only contend for the GIL and the Redis pool's lock.
        anyio.to_thread.current_default_thread_limiter().total_tokens = s.http_threads
        yield

    app = FastAPI(title="tagspace", version="1", lifespan=lifespan, description=(
        "#TagSpace streaming hashtag and feed recommender: hashtag suggestions and per-user "
        "feeds from post embeddings (Weston, Chopra, Adams, EMNLP 2014)."),
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
        default_response_class=JSONBytes)
    app.add_middleware(HotRoutes, backend=daemon)
    app.add_middleware(Gate, daemon=daemon)  # added last: outermost, before HotRoutes

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        return _error(503, "state store unavailable, retry later")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def k_checked(k: int) -> int:
        if k > s.max_k:
            raise StarletteHTTPException(422, f"k: at most {s.max_k}")
        return k

    # The hot routes build their answers from typed values and return the bytes themselves:
    # response_model documents them, pydantic does not validate them again.
    # (daemon.hot_routes answers their plain requests before they reach FastAPI)
    @app.post("/v1/suggest", response_model=SuggestResponse)
    def suggest(body: SuggestRequest) -> Response:
        return JSONBytes(suggest_answer(daemon, body.text, k_checked(body.k), body.user_id))

    def get(path: str, **kwargs: Any) -> Callable[[Any], Any]:
        """A GET route that answers HEAD too (probes, ``curl -I``); HEAD stays out of the
        OpenAPI document, where it would repeat the GET operation's id."""
        def register(route: Any) -> Any:
            app.api_route(path, methods=["HEAD"], include_in_schema=False)(route)
            return app.get(path, **kwargs)(route)
        return register

    @get("/v1/feed/{user_id}", response_model=FeedResponse)
    def feed(user_id: Annotated[Id, Path(max_length=MAX_ID_CHARS)],
             k: int = Query(20, ge=1, le=1000)) -> Response:
        return JSONBytes(feed_answer(daemon, user_id, k_checked(k)))

    @get("/v1/posts/{post_id}", response_model=PostResponse,
         responses={404: {"model": ErrorResponse}})
    def post(post_id: Annotated[Id, Path(max_length=MAX_ID_CHARS)]) -> dict[str, Any]:
        stored = daemon.store.post(post_id)
        if stored is None:
            raise StarletteHTTPException(404, f"unknown post {post_id!r}")
        return {"post_id": stored.post_id, "user_id": stored.user_id, "ts": stored.ts,
                "tags": stored.tags, "model_version": stored.version}

    @get("/v1/users/{user_id}/history", response_model=HistoryResponse)
    def history(user_id: Annotated[Id, Path(max_length=MAX_ID_CHARS)],
                limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"user_id": user_id, "post_ids": daemon.store.history(user_id, limit)}

    @get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(daemon.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/checkpoint", responses={401: {"model": ErrorResponse},
                                              403: {"model": ErrorResponse}})
    def checkpoint() -> Any:
        """Write a model version now (trainer or `all` role); needs the bearer token."""
        if not daemon.trains:
            return _error(409, "this replica does not train: checkpoints come from the trainer")
        if not daemon.checkpoint():
            return _error(500, "checkpoint failed: see the log")
        return {"model_version": daemon.hub.version}

    @get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", responses={503: {"model": ErrorResponse}})
    def readyz() -> Any:
        problems = daemon.readiness_problems()
        if problems:
            return _error(503, "not ready: " + ", ".join(problems))
        return {"status": "ready"}

    return app
