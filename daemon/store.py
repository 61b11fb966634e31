"""Every Redis key the daemon uses, and every read and write of them.

Keys (``P`` = the configured prefix; ids come last, so no id can reach another key's name):
- ``P:post:{post_id}`` hash: ``user``, ``ts``, ``tags`` and ``tokens`` (JSON), ``emb`` (float32
  bytes, or float16 bytes and the byte 0x01: ``encode_embedding``), ``ver`` (the model version
  that made ``emb``).
- ``P:recent`` sorted set: post id -> ts; the newest ``recent_posts`` posts (by event time).
- ``P:arrivals`` stream: post ids in the order they were stored (capped near
  ``recent_posts``): every replica's feed candidates follow it, late events included.
- ``P:hist:{user}`` sorted set: post id -> ts of the user's positive interactions (deduplicated
  by post, newest first when read, capped at ``history_size``).
- ``P:seen:{user}`` sorted set: posts the user interacted with or hid: never shown again.
- ``P:utags:{user}`` hash: hashtag -> times the user posted it (all time).
- ``P:authored:{user}`` list: JSON ``[post_id, tags, tokens]`` of the user's newest tagged
  posts, newest first, capped at ``authored_size``: the author history that personalizes
  suggestions (``tagspace.personalize``, the same history ``evaluate --personalize`` builds).
- ``P:tags`` hash: hashtag -> posts carrying it. ``P:pop`` sorted set: post -> positive
  interactions (cold-start feeds).
- ``P:event:{event_id}``: an interaction already applied (expires after ``event_ttl_s``).

Expiry: a post after ``post_ttl_s`` (keep it above the topics' retention, or a redelivered old
post would count again); a user's history, seen set and hashtag counts ``user_ttl_s`` after
their last activity; ``P:pop`` keeps the ``recent_posts`` most liked posts.

Reads: a feed's are one Lua script (``feed_state``: seen set, history ids, those posts).

Exactly-once effect: a post's and an interaction's writes are one Lua script each, applied only
if the post / event id is new, so replaying a record changes nothing. Writes are pipelined per
Kafka poll batch.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from daemon.records import Interaction
from tagspace.dataset import Post
from tagspace.personalize import MAX_HISTORY_POSTS

_ADD_POST = """
-- KEYS: post, recent, tags, utags, arrivals, authored; ARGV: post_id, user, ts, tags_json,
-- tokens_json, emb, ver, recent_cap, write_id, post_ttl, user_ttl, authored_cap, authored_entry,
-- tag...
if redis.call('HSETNX', KEYS[1], 'user', ARGV[2]) == 0 then
  -- 1 when this very write was applied before (a client retry of the same pipeline)
  if redis.call('HGET', KEYS[1], 'wid') == ARGV[9] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'ts', ARGV[3], 'tags', ARGV[4], 'tokens', ARGV[5],
           'emb', ARGV[6], 'ver', ARGV[7], 'wid', ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[8])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[10])
for i = 14, #ARGV do
  redis.call('HINCRBY', KEYS[3], ARGV[i], 1)
  redis.call('HINCRBY', KEYS[4], ARGV[i], 1)
end
if #ARGV >= 14 then
  redis.call('EXPIRE', KEYS[4], ARGV[11])
  -- the author's newest tagged posts (tags and tokens): personalized suggestions
  redis.call('LPUSH', KEYS[6], ARGV[13])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[12]) - 1)
  redis.call('EXPIRE', KEYS[6], ARGV[11])
end
return 1
"""

_ADD_INTERACTION = """
-- KEYS: event, hist, seen, pop; ARGV: ttl, post_id, ts, positive, hide, hist_cap, seen_cap,
-- write_id, user_ttl, pop_cap
if not redis.call('SET', KEYS[1], ARGV[8], 'NX', 'EX', ARGV[1]) then
  if redis.call('GET', KEYS[1]) == ARGV[8] then return 1 end  -- a retry of this very write
  return 0
end
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[6]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[9])
  redis.call('ZINCRBY', KEYS[4], 1, ARGV[2])
  -- the least liked go first once over the cap
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[10]) - 1)
end
if ARGV[4] == '1' or ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[7]) - 1)
  redis.call('EXPIRE', KEYS[3], ARGV[9])
end
return 1
"""

_SET_EMBEDDING = """
-- KEYS: post; ARGV: emb, ver. Only a newer model version replaces an embedding.
local ver = redis.call('HGET', KEYS[1], 'ver')
if not ver or tonumber(ver) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'emb', ARGV[1], 'ver', ARGV[2])
return 1
"""


_FEED_STATE = """
-- KEYS: seen, hist; ARGV: post key prefix, history limit, embedding bytes (float32, float16).
-- Everything a feed reads, in one round trip: the seen set, then the newest history posts,
-- each as {user, ts, emb, ver} plus its tokens when it must be embedded now (its embedding
-- is missing or of another model's size; an older version's is used as stored, and
-- re-embedded in the background from the stored post). Post keys are derived here
-- from the history's ids (the prefix is Store.post_key's), so they are not in KEYS: the
-- script needs one Redis, not a cluster (as the shared keys do; docs/OPERATIONS.md).
local seen = redis.call('ZRANGE', KEYS[1], 0, -1)
local limit = tonumber(ARGV[2])
local ids = {}
if limit > 0 then ids = redis.call('ZREVRANGE', KEYS[2], 0, limit - 1) end
local posts = {}
for i, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local row = redis.call('HMGET', key, 'user', 'ts', 'emb', 'ver')
  if row[1] and (not row[3] or (#row[3] ~= tonumber(ARGV[3]) and
                                #row[3] ~= tonumber(ARGV[4]))) then
    row[5] = redis.call('HGET', key, 'tokens')
  end
  posts[i] = row
end
return {seen, ids, posts}
"""


EMBEDDING_DTYPES = ("float32", "float16")
FLOAT16_TAG = b"\x01"  # ends float16 bytes: an odd length, never a float32 vector's


def encode_embedding(embedding: np.ndarray, dtype: str) -> bytes:
    """float32: 4 bytes a dimension (as before). float16: 2 bytes a dimension and the tag byte:
    a post hash 16.5% smaller at the same feed recall (docs/PERFORMANCE.md, "Redis memory")."""
    if dtype == "float16":
        return np.asarray(embedding, np.float16).tobytes() + FLOAT16_TAG
    return np.asarray(embedding, np.float32).tobytes()


def decode_embedding(raw: bytes) -> np.ndarray:
    """float32 values of what ``encode_embedding`` wrote, in either dtype."""
    if len(raw) % 2 and raw[-1:] == FLOAT16_TAG:
        return np.frombuffer(raw[:-1], np.float16).astype(np.float32)
    return np.frombuffer(raw, np.float32)


@dataclass(frozen=True)
class StoredPost:
    post_id: str
    user_id: str
    ts: float
    tags: list[str]
    tokens: list[str]
    embedding: np.ndarray | None
    version: int


@dataclass(frozen=True)
class FeedState:
    """What a feed needs from Redis: the posts the user interacted with or hid, and their
    newest history posts (newest first; tags not read; tokens only where ``unusable``)."""

    seen: list[str]
    history: list[StoredPost]
    version: int  # the model version the history was read against

    @staticmethod
    def unusable(post: StoredPost, dim: int) -> bool:
        """No embedding, or another model's size: it must be embedded before use."""
        return post.embedding is None or len(post.embedding) != dim

    def older(self, post: StoredPost) -> bool:
        """Embedded by a version older than the one read against."""
        return post.version < self.version


@dataclass(frozen=True)
class WriteResult:
    post_is_new: list[bool]  # per post given: False for a replay (nothing changed)
    interaction_is_new: list[bool]


Observer = Callable[[str, float, bool], None]  # (operation, seconds, failed)


class Store:
    def __init__(self, client: redis.Redis, prefix: str, *, history_size: int = 200,
                 seen_size: int = 5000, recent_posts: int = 100_000,
                 event_ttl_s: int = 7 * 24 * 3600, post_ttl_s: int = 30 * 24 * 3600,
                 user_ttl_s: int = 90 * 24 * 3600, authored_size: int = MAX_HISTORY_POSTS,
                 embedding_dtype: str = "float32", observe: Observer | None = None):
        """``embedding_dtype``: how embeddings are written (``EMBEDDING_DTYPES``); both are
        read whatever it is."""
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}")
        self.embedding_dtype = embedding_dtype
        self.r = client
        self.p = prefix
        self.history_size, self.seen_size = history_size, seen_size
        self.recent_posts, self.event_ttl_s = recent_posts, event_ttl_s
        self.post_ttl_s, self.user_ttl_s = post_ttl_s, user_ttl_s
        self.authored_size = authored_size
        self._observe = observe or (lambda op, seconds, failed: None)
        self._add_post = client.register_script(_ADD_POST)
        self._add_interaction = client.register_script(_ADD_INTERACTION)
        self._set_embedding = client.register_script(_SET_EMBEDDING)
        self._feed_state = client.register_script(_FEED_STATE)

    # key names: one place
    def post_key(self, post_id: str) -> str:
        return f"{self.p}:post:{post_id}"

    def history_key(self, user_id: str) -> str:
        return f"{self.p}:hist:{user_id}"

    def seen_key(self, user_id: str) -> str:
        return f"{self.p}:seen:{user_id}"

    def user_tags_key(self, user_id: str) -> str:
        return f"{self.p}:utags:{user_id}"

    def authored_key(self, user_id: str) -> str:
        return f"{self.p}:authored:{user_id}"

    def event_key(self, event_id: str) -> str:
        return f"{self.p}:event:{event_id}"

    @property
    def recent_key(self) -> str:
        return f"{self.p}:recent"

    @property
    def arrivals_key(self) -> str:
        return f"{self.p}:arrivals"

    @property
    def tags_key(self) -> str:
        return f"{self.p}:tags"

    @property
    def popular_key(self) -> str:
        return f"{self.p}:pop"

    def _timed(self, op: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            out = fn()
        except redis.RedisError:
            self._observe(op, time.perf_counter() - start, True)
            raise
        self._observe(op, time.perf_counter() - start, False)
        return out

    def ping(self) -> bool:
        try:
            return bool(self._timed("ping", self.r.ping))
        except redis.RedisError:
            return False

    # writes
    def write(self, posts: Sequence[tuple[Post, np.ndarray]], version: int,
              interactions: Sequence[Interaction], write_id: str = "") -> WriteResult:
        """One pipeline: each post with its embedding, each interaction; idempotent.

        ``write_id`` names this batch: when a retry finds a record already applied by the same
        write (the connection dropped after Redis ran it), the record still counts as new."""
        if not posts and not interactions:
            return WriteResult([], [])
        write_id = write_id or uuid.uuid4().hex
        # The same id twice in one batch: the later ones are duplicates, never sent (the
        # write-id check would otherwise take them for a retry of the first).
        first_posts = _first_occurrences([post.post_id for post, _ in posts])
        first_events = _first_occurrences([e.event_id for e in interactions])
        pipe = self.r.pipeline(transaction=False)
        for (post, emb), first in zip(posts, first_posts, strict=True):
            if not first:
                continue
            self._add_post(
                keys=[self.post_key(post.post_id), self.recent_key, self.tags_key,
                      self.user_tags_key(post.user_id or ""), self.arrivals_key,
                      self.authored_key(post.user_id or "")],
                args=[post.post_id, post.user_id or "", repr(float(post.ts or 0.0)),
                      json.dumps(list(post.tags)), json.dumps(list(post.tokens)),
                      encode_embedding(emb, self.embedding_dtype), version, self.recent_posts,
                      write_id, self.post_ttl_s, self.user_ttl_s, self.authored_size,
                      json.dumps([post.post_id, list(post.tags), list(post.tokens)]),
                      *post.tags],
                client=pipe)
        for e, first in zip(interactions, first_events, strict=True):
            if not first:
                continue
            self._add_interaction(
                keys=[self.event_key(e.event_id), self.history_key(e.user_id),
                      self.seen_key(e.user_id), self.popular_key],
                args=[self.event_ttl_s, e.post_id, repr(e.ts), int(e.positive),
                      int(e.kind == "hide"), self.history_size, self.seen_size, write_id,
                      self.user_ttl_s, self.recent_posts],
                client=pipe)
        results = iter(self._timed("write", pipe.execute))
        return WriteResult([first and bool(next(results)) for first in first_posts],
                           [first and bool(next(results)) for first in first_events])

    def set_embeddings(self, items: Sequence[tuple[str, np.ndarray]], version: int) -> int:
        """Replace embeddings made by older versions; returns how many changed."""
        if not items:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for post_id, emb in items:
            self._set_embedding(keys=[self.post_key(post_id)],
                                args=[encode_embedding(emb, self.embedding_dtype), version],
                                client=pipe)
        return sum(self._timed("reembed", pipe.execute))

    # reads
    def posts(self, post_ids: Sequence[str], with_tokens: bool = False) -> list[StoredPost | None]:
        fields = ["user", "ts", "tags", "emb", "ver"] + (["tokens"] if with_tokens else [])
        pipe = self.r.pipeline(transaction=False)
        for post_id in post_ids:
            pipe.hmget(self.post_key(post_id), fields)
        rows = self._timed("read_posts", pipe.execute)
        out: list[StoredPost | None] = []
        for post_id, row in zip(post_ids, rows, strict=True):
            if row[0] is None:
                out.append(None)
                continue
            emb = decode_embedding(row[3]) if row[3] else None
            tokens = json.loads(row[5]) if with_tokens and row[5] else []
            out.append(StoredPost(post_id, row[0].decode(), float(row[1]),
                                  json.loads(row[2]), tokens, emb, int(row[4] or 0)))
        return out

    def post(self, post_id: str) -> StoredPost | None:
        return self.posts([post_id])[0]

    def feed_state(self, user_id: str, history_limit: int, version: int,
                   dim: int) -> FeedState:
        """The user's seen posts and newest ``history_limit`` history posts with their
        embeddings (tokens where there is none of ``dim`` floats): one round trip, a Lua
        script. History posts no longer stored are left out. ``version``: the model version
        the caller compares against (``FeedState.older``)."""
        seen, ids, rows = self._timed("feed_state", lambda: self._feed_state(
            keys=[self.seen_key(user_id), self.history_key(user_id)],
            args=[self.post_key(""), history_limit, 4 * dim, 2 * dim + 1]))
        history = []
        for post_id, row in zip(ids, rows, strict=True):
            if not row or row[0] is None:
                continue  # expired or never stored
            emb = decode_embedding(row[2]) if row[2] else None
            tokens = json.loads(row[4]) if len(row) > 4 and row[4] else []
            history.append(StoredPost(post_id.decode(), row[0].decode(), float(row[1] or 0.0),
                                      [], tokens, emb, int(row[3] or 0)))
        return FeedState([i.decode() for i in seen], history, version)

    def history(self, user_id: str, limit: int) -> list[str]:
        ids = self._timed("history", lambda: self.r.zrevrange(self.history_key(user_id), 0,
                                                               limit - 1))
        return [i.decode() for i in ids]

    def seen(self, user_id: str) -> set[str]:
        ids = self._timed("seen", lambda: self.r.zrange(self.seen_key(user_id), 0, -1))
        return {i.decode() for i in ids}

    def user_tags(self, user_id: str) -> dict[str, int]:
        raw = self._timed("user_tags", lambda: self.r.hgetall(self.user_tags_key(user_id)))
        return {k.decode(): int(v) for k, v in raw.items()}

    def authored(self, user_id: str) -> list[tuple[str, list[str], list[str]]]:
        """(post_id, tags, tokens) of the user's newest tagged posts, oldest first."""
        return self.authored_many([user_id])[0]

    def authored_many(self, user_ids: Sequence[str | None]
                      ) -> list[list[tuple[str, list[str], list[str]]]]:
        """``authored`` of each user (None: no one, []) in one round trip."""
        named = [u for u in user_ids if u is not None]
        if not named:
            return [[] for _ in user_ids]

        def read() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for user_id in named:
                pipe.lrange(self.authored_key(user_id), 0, self.authored_size - 1)
            return pipe.execute()

        raws = iter(self._timed("authored", read))
        return [[] if u is None else [tuple(json.loads(entry))  # type: ignore[misc]
                                      for entry in reversed(next(raws))]
                for u in user_ids]

    def arrivals_after(self, cursor: str, limit: int) -> list[tuple[str, str]]:
        """(stream id, post id) of posts stored after ``cursor`` ("0": from the start of the
        capped stream), in arrival order, at most ``limit``."""
        start = "-" if cursor == "0" else f"({cursor}"
        rows = self._timed("arrivals", lambda: self.r.xrange(self.arrivals_key, start, "+",
                                                             count=limit))
        return [(sid.decode(), fields[b"id"].decode()) for sid, fields in rows]

    def most_popular(self, limit: int) -> dict[str, float]:
        """The ``limit`` posts with the most positive interactions -> their count."""
        rows = self._timed("popularity", lambda: self.r.zrevrange(self.popular_key, 0,
                                                                  limit - 1, withscores=True))
        return {i.decode(): float(s) for i, s in rows}

    def popularity_of(self, post_id: str) -> float:
        return float(self._timed("popularity", lambda: self.r.zscore(self.popular_key,
                                                                     post_id)) or 0.0)

    def count_posts(self) -> int:
        return int(self._timed("count", lambda: self.r.zcard(self.recent_key)))

    def clear(self) -> int:
        """Delete every key under the prefix (tests and resets)."""
        removed = 0
        for key in self.r.scan_iter(match=f"{self.p}:*", count=1000):
            removed += self.r.delete(key)
        return removed


def _first_occurrences(ids: Sequence[str]) -> list[bool]:
    seen: set[str] = set()
    out = []
    for i in ids:
        out.append(i not in seen)
        seen.add(i)
    return out

