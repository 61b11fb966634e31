"""The HTTP API (``../shared/CONTRACT.md``): suggestions, feeds, posts, histories, health, metrics.

FastAPI validates requests (4xx with ``{"error": ...}``) and serves the OpenAPI document at
``/openapi.json`` (browsable at ``/docs``). Handlers are plain functions: FastAPI runs them on
its thread pool, beside the ingestion and training threads.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import redis
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from daemon.service import Daemon

MAX_TEXT_CHARS = 5000
MAX_ID_CHARS = 256


class SuggestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT_CHARS, description="the post's text")
    k: int = Field(10, ge=1, le=1000, description="how many tags (at most max_k)")
    user_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                                description="the author: their hashtag history personalizes")


class TagScore(BaseModel):
    tag: str
    score: float


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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(daemon: Daemon) -> FastAPI:
    s = daemon.settings
    app = FastAPI(title="tagspace", version="1", description=(
        "#TagSpace streaming hashtag and feed recommender: hashtag suggestions and per-user "
        "feeds from post embeddings (Weston, Chopra, Adams, EMNLP 2014)."),
        responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path.startswith("/admin/") or (s.api_token and path.startswith("/v1/")):
            if not s.api_token:
                return _error(403, "admin routes are disabled: no api_token is configured")
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {s.api_token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token"},
                                    status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > s.max_body_bytes):
            return _error(413, f"request body over {s.max_body_bytes} bytes")
        if length is None and request.method == "POST":  # chunked: count what arrives
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > s.max_body_bytes:
                    return _error(413, f"request body over {s.max_body_bytes} bytes")
                chunks.append(chunk)
            request._body = b"".join(chunks)  # Starlette hands the read body on to the route
        if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
            # `curl -d '{...}'` says form-urlencoded: the body is read as JSON all the same
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            request.scope["headers"] = headers + [(b"content-type", b"application/json")]
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        daemon.metrics.api_latency.labels(name, str(response.status_code)).observe(
            time.perf_counter() - start)
        return response

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

    @app.post("/v1/suggest", response_model=SuggestResponse)
    def suggest(body: SuggestRequest) -> dict[str, Any]:
        k = k_checked(body.k)
        tags = daemon.scorer.suggest(body.text, k, body.user_id)
        return {"tags": [{"tag": t, "score": sc} for t, sc in tags],
                "model_version": daemon.hub.version}

    @app.get("/v1/feed/{user_id}", response_model=FeedResponse)
    def feed(user_id: str = Path(max_length=MAX_ID_CHARS),
             k: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
        items, cold = daemon.feeds.feed(user_id, k_checked(k))
        return {"user_id": user_id, "items": [{"post_id": i.post_id, "score": i.score}
                                              for i in items],
                "model_version": daemon.hub.version, "cold_start": cold}

    @app.get("/v1/posts/{post_id}", response_model=PostResponse,
             responses={404: {"model": ErrorResponse}})
    def post(post_id: str = Path(max_length=MAX_ID_CHARS)) -> dict[str, Any]:
        stored = daemon.store.post(post_id)
        if stored is None:
            raise StarletteHTTPException(404, f"unknown post {post_id!r}")
        return {"post_id": stored.post_id, "user_id": stored.user_id, "ts": stored.ts,
                "tags": stored.tags, "model_version": stored.version}

    @app.get("/v1/users/{user_id}/history", response_model=HistoryResponse)
    def history(user_id: str = Path(max_length=MAX_ID_CHARS),
                limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"user_id": user_id, "post_ids": daemon.store.history(user_id, limit)}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        daemon.refresh_gauges()
        return Response(generate_latest(daemon.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/checkpoint", responses={401: {"model": ErrorResponse},
                                              403: {"model": ErrorResponse}})
    def checkpoint() -> Any:
        """Write a model version now (trainer or `all` role); needs the bearer token."""
        if daemon.trainer is None:
            return _error(409, "this replica does not train: checkpoints come from the trainer")
        if not daemon.checkpoint():
            return _error(500, "checkpoint failed: see the log")
        return {"model_version": daemon.hub.version}

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    def readyz() -> Any:
        problems = daemon.readiness_problems()
        if problems:
            return _error(503, "not ready: " + ", ".join(problems))
        return {"status": "ready"}

    return app
