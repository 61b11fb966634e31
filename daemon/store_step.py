"""The store step of ingestion (``daemon.chain``): a batch's posts, embeddings and
interactions into Redis in one pipeline, idempotent (``Store.write``).

Redis down or slow rejects the batch (``MessageRejected``): the consumer pauses, the same batch
is written again with jittered backoff under the same write id, so a write that Redis ran before
the connection dropped still counts as new. This is the only backpressure of ingestion. A batch
Redis refuses (a script error) or that cannot be written at all is written record by record, and
the records that still fail are counted (``store_error``) and skipped, never retried forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import redis

from daemon.chain import Batch, MessageRejected, Retry, Stage, Step
from daemon.config import Settings
from daemon.metrics import Metrics
from daemon.records import Interaction
from daemon.store import Store, WriteResult
from tagspace.dataset import Post

log = logging.getLogger(__name__)
DOWN = (redis.RedisError, OSError)  # the connection; ResponseError and DataError are records'
REFUSED = (redis.ResponseError, redis.DataError)


class StoreBatch(Stage):
    def __init__(self, next_step: Step, store: Store, settings: Settings, metrics: Metrics,
                 on_redis_state: Callable[[bool], None] = lambda ok: None):
        super().__init__(next_step)
        self.store, self.s, self.metrics = store, settings, metrics
        self.on_redis_state = on_redis_state
        self.retry = Retry()

    def apply(self, batch: Batch) -> None:
        if not self.retry.due():
            raise MessageRejected
        assert batch.embeddings is not None, "the embed step comes before the store"
        items = list(zip([p for p, _ in batch.posts], batch.embeddings, strict=True))
        try:
            result = self._write(items, batch)
        except DOWN as e:  # never a refusal: _write_each takes those record by record
            self.retry.failed()
            self.on_redis_state(False)
            self.metrics.paused.set(1)  # no polling until Redis takes this batch
            log.warning("Redis write failed (attempt %d), not committing: %s",
                        self.retry.attempts, e)
            raise MessageRejected from e
        if self.retry.attempts:
            log.info("Redis is back after %d failed attempts", self.retry.attempts)
        self.retry.succeeded()
        self.metrics.paused.set(0)
        self.on_redis_state(True)
        batch.stored = result
        self._count(batch, result)

    def _write(self, items: Sequence[tuple[Post, np.ndarray]], batch: Batch) -> WriteResult:
        try:
            return self.store.write(items, batch.version, batch.interactions, batch.write_id)
        except REFUSED:
            log.exception("Redis refused a batch: writing its records one by one")
        except DOWN:
            raise
        except Exception:  # not Redis: a record it cannot take; find it, never loop on it
            log.exception("a batch could not be stored: writing its records one by one")
        return self._write_each(items, batch)

    def _write_each(self, items: Sequence[tuple[Post, np.ndarray]],
                    batch: Batch) -> WriteResult:
        post_new = [self._write_one([item], [], batch) for item in items]
        event_new = [self._write_one([], [event], batch) for event in batch.interactions]
        return WriteResult(post_new, event_new)

    def _write_one(self, items: Sequence[tuple[Post, np.ndarray]],
                   interactions: Sequence[Interaction], batch: Batch) -> bool:
        try:
            result = self.store.write(items, batch.version, interactions, batch.write_id)
        except REFUSED as e:
            return self._skip(items, interactions, e)
        except DOWN:
            raise  # the whole batch again, later: the records written so far count as new
        except Exception as e:  # this record is the culprit: counted and logged, not retried
            return self._skip(items, interactions, e)
        return bool((result.post_is_new or result.interaction_is_new)[0])

    def _skip(self, items: Sequence[tuple[Post, np.ndarray]],
              interactions: Sequence[Interaction], error: Exception) -> bool:
        topic = self.s.posts_topic if items else self.s.interactions_topic
        self.metrics.invalid.labels(topic, "store_error").inc()
        log.error("record not storable, skipped: %r (%s)",
                  items[0][0] if items else interactions[0], error)
        return False

    def _count(self, batch: Batch, result: WriteResult) -> None:
        now = time.time()
        posts, events = self.s.posts_topic, self.s.interactions_topic
        for (_, kafka_ts), new in zip(batch.posts, result.post_is_new, strict=True):
            (self.metrics.applied if new else self.metrics.duplicates).labels(posts).inc()
            if new:
                self.metrics.freshness.observe(max(0.0, now - kafka_ts))
        for new in result.interaction_is_new:
            (self.metrics.applied if new else self.metrics.duplicates).labels(events).inc()
