"""The Kafka side: consume posts and interactions, apply them, commit.

Per poll batch, in this order: decode every record (invalid ones go to the dead-letter topic,
flushed); embed the valid posts with the live model (and score them first: prequential
evaluation); write posts and interactions to Redis in one pipeline (idempotent, retried with
jittered backoff while Redis is down); only then commit each partition's offsets. So delivery
is at-least-once and the effect exactly-once. Tagged posts that were new go to the trainer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from daemon.config import Settings
from daemon.metrics import Metrics, RollingRate
from daemon.model_hub import ModelHub
from daemon.records import Interaction, InvalidRecord, dead_letter, decode_interaction, decode_post
from daemon.store import Store, WriteResult
from daemon.trainer import Trainer
from tagspace.dataset import Post
from tagspace.precision import use_bf16

log = logging.getLogger(__name__)
EVAL_PER_BATCH = 64  # prequential evaluation: at most this many posts per batch are scored
EVAL_PER_S = 20.0  # and at most this many per second: a sample is enough for the P@1 gauges
LAG_EVERY_S = 1.0


@dataclass
class Decoded:
    posts: list[tuple[Post, float]] = field(default_factory=list)  # with the Kafka timestamp
    interactions: list[Interaction] = field(default_factory=list)
    dead: list[tuple[str, bytes]] = field(default_factory=list)  # (source topic, dead letter)


class Ingestor:
    def __init__(self, settings: Settings, store: Store, hub: ModelHub,
                 trainer: Trainer | None, metrics: Metrics,
                 on_redis_state: Callable[[bool], None] = lambda ok: None):
        self.s = settings
        self.store, self.hub, self.trainer, self.metrics = store, hub, trainer, metrics
        self.on_redis_state = on_redis_state
        self.p1, self.r10 = RollingRate(), RollingRate()
        self.consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._last_lag = 0.0
        self._write_id = ""
        self.failed = False  # set when the loop died of an unexpected error
        self._eval_tokens, self._eval_at = float(EVAL_PER_BATCH), time.monotonic()
        self._bf16 = use_bf16(settings.ingest_bf16)

    # clients
    @property
    def trainer_only(self) -> bool:
        """The trainer role reads every post (a consumer group of its own) to train on, and
        leaves Redis, dead letters and interactions to the serving replicas."""
        return self.s.role == "trainer"

    def _make_consumer(self) -> KafkaConsumer:
        if self.trainer_only:
            topics, group = [self.s.posts_topic], f"{self.s.group_id}-trainer"
        else:
            topics, group = [self.s.posts_topic, self.s.interactions_topic], self.s.group_id
        return KafkaConsumer(
            *topics, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.s.session_timeout_ms,
            heartbeat_interval_ms=self.s.heartbeat_interval_ms,
            max_poll_records=self.s.max_poll_records, max_poll_interval_ms=300_000,
            client_id="tagspace-daemon", **self.s.kafka_options())

    def producer(self) -> KafkaProducer:
        # Not idempotent: an idempotent kafka-python producer breaks for good after a broker
        # restart. Dead letters are keyed by source offset, so a duplicate is recognisable.
        if self._producer is None:
            self._producer = KafkaProducer(acks="all", enable_idempotence=False, retries=5,
                                           linger_ms=5, **self.s.kafka_options())
        return self._producer

    # the loop
    def run(self, stop: threading.Event) -> None:
        attempt = 0
        while self.consumer is None:
            try:
                self.consumer = self._make_consumer()
            except KafkaError as e:  # the broker is not there yet: keep trying until stopped
                attempt += 1
                log.warning("cannot reach Kafka at %s (attempt %d): %s",
                            self.s.kafka_bootstrap, attempt, e)
                if stop.wait(_backoff(attempt)):
                    return
        try:
            while not stop.is_set():
                try:
                    batch = self.consumer.poll(timeout_ms=200)
                except KafkaError as e:
                    log.warning("Kafka poll failed: %s", e)
                    stop.wait(1.0)
                    continue
                if batch:
                    try:
                        self._process(batch, stop)
                    except InterruptedError:  # stopping mid-batch: nothing of it committed
                        break
                self._update_lag()
        finally:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # closing a consumer whose broker is gone
                log.warning("consumer close failed", exc_info=True)
            if self._producer is not None:
                self._producer.close(timeout=2)

    def _process(self, batch: dict, stop: threading.Event) -> None:
        decoded = Decoded()
        for tp, records in batch.items():
            for record in records:
                self._decode(tp.topic, record, decoded)
        if self.trainer_only:
            self._train_only(decoded, batch)
            return
        if decoded.dead:
            self._send_dead_letters(decoded.dead, stop)
        posts = [p for p, _ in decoded.posts]
        version = self.hub.version  # before embedding: a label never newer than the model
        embeddings = self._embed(posts)
        self._write_id = uuid.uuid4().hex  # one per batch, kept across its retries
        result = self._write_with_retry(
            list(zip(posts, embeddings, strict=True)), version, decoded.interactions, stop)
        if result is None:  # stopping while Redis is down: commit nothing, replay later
            return
        now = time.time()
        for (_, kafka_ts), new in zip(decoded.posts, result.post_is_new, strict=True):
            topic = self.s.posts_topic
            (self.metrics.applied if new else self.metrics.duplicates).labels(topic).inc()
            if new:
                self.metrics.freshness.observe(max(0.0, now - kafka_ts))
        for new in result.interaction_is_new:
            topic = self.s.interactions_topic
            (self.metrics.applied if new else self.metrics.duplicates).labels(topic).inc()
        if self.trainer is not None:
            self._learn([p for p, new in zip(posts, result.post_is_new, strict=True) if new])
        self._commit(batch)

    def _train_only(self, decoded: Decoded, batch: dict) -> None:
        posts = [p for p, _ in decoded.posts]
        tagged = [p for p in posts if p.tags]
        self._embed(tagged[:self._eval_budget()])  # only scored: the serving replicas store
        if self.trainer is not None:
            self._learn(posts)
        self._commit(batch)

    def _decode(self, topic: str, record, out: Decoded) -> None:  # type: ignore[no-untyped-def]
        self.metrics.consumed.labels(topic).inc()
        kafka_ts = record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 \
            else time.time()
        try:
            if topic == self.s.posts_topic:
                post = decode_post(record.value, kafka_ts, self.s.max_record_bytes,
                                   self.s.max_text_chars)
                out.posts.append((post, kafka_ts))
            else:
                out.interactions.append(
                    decode_interaction(record.value, kafka_ts, self.s.max_record_bytes))
        except Exception as e:  # InvalidRecord, or a decoder bug: never stop the stream on it
            reason = str(e) if isinstance(e, InvalidRecord) else "decode_error"
            if reason == "decode_error":
                log.exception("decoding %s[%d]@%d failed", topic, record.partition,
                              record.offset)
            self.metrics.invalid.labels(topic, reason).inc()
            out.dead.append((topic, dead_letter(record.value, reason, topic, record.partition,
                                                record.offset, self.s.max_record_bytes)))

    def _send_dead_letters(self, dead: list[tuple[str, bytes]], stop: threading.Event) -> None:
        attempt = 0
        while True:
            try:
                producer = self.producer()
                futures = [producer.send(self.s.dead_letter_topic, value) for _, value in dead]
                producer.flush(timeout=5)  # a broker restart: fail fast, rebuild the producer
                for f in futures:
                    f.get(timeout=1)
                break
            except KafkaError as e:
                attempt += 1
                log.warning("dead-letter send failed (attempt %d): %s", attempt, e)
                if not e.retriable and attempt >= 3:  # refused for good: never block on it
                    log.error("dead letters refused by Kafka, skipped: %d records", len(dead))
                    self.metrics.invalid.labels(self.s.dead_letter_topic,
                                                "dead_letter_refused").inc(len(dead))
                    return
                if self._producer is not None:  # a fresh producer after broker trouble
                    self._producer.close(timeout=1)
                    self._producer = None
                if stop.wait(_backoff(attempt)):
                    raise InterruptedError("stopping with unsent dead letters") from e
        for topic, _ in dead:
            self.metrics.dead_lettered.labels(topic).inc()

    def _embed(self, posts: list[Post]) -> np.ndarray:
        """The posts' embeddings; the tagged ones are scored in the same pass first
        (prequential P@1 / R@10: before any training on them)."""
        if not posts:
            return np.zeros((0, self.hub.online.model.config.dim), np.float32)
        budget = self._eval_budget() if self.trainer is not None else 0
        embeddings, predictions = self.hub.online.embed_and_evaluate(posts, budget, self._bf16)
        self._eval_tokens -= len(predictions)
        for pred in predictions:
            self.p1.add(float(pred.hit_at_1), 1.0)
            self.r10.add(pred.found_at_10, pred.gold)
            self.metrics.evaluated.inc()
        if predictions:
            self.metrics.online_p1.set(self.p1.rate())
            self.metrics.online_r10.set(self.r10.rate())
        return embeddings

    def _eval_budget(self) -> int:
        """Posts this batch may score: a token bucket of EVAL_PER_S, at most EVAL_PER_BATCH."""
        now = time.monotonic()
        self._eval_tokens = min(float(EVAL_PER_BATCH),
                                self._eval_tokens + (now - self._eval_at) * EVAL_PER_S)
        self._eval_at = now
        return int(self._eval_tokens)

    def _write_with_retry(self, posts, version, interactions, stop,  # type: ignore[no-untyped-def]
                          split: bool = True):
        attempt = 0
        while True:
            try:
                result = self.store.write(posts, version, interactions, self._write_id)
                if attempt:
                    log.info("Redis is back after %d failed attempts", attempt)
                    self.metrics.paused.set(0)
                self.on_redis_state(True)
                return result
            except (redis.ResponseError, redis.DataError):  # Redis refused a record's script
                if not split:
                    raise
                log.exception("Redis refused a batch: writing its records one by one")
                return self._write_each(posts, version, interactions, stop)
            except (redis.RedisError, OSError) as e:  # Redis down or slow: wait, retry
                attempt += 1
                self.on_redis_state(False)
                self.metrics.paused.set(1)  # no polling until Redis takes this batch
                log.warning("Redis write failed (attempt %d), not committing: %s", attempt, e)
                if stop.wait(_backoff(attempt)):
                    return None
            except Exception:  # not Redis: a record it cannot take; find it, never loop on it
                if not split:
                    raise
                log.exception("a batch could not be stored: writing its records one by one")
                return self._write_each(posts, version, interactions, stop)

    def _write_each(self, posts, version, interactions, stop):  # type: ignore[no-untyped-def]
        post_new, event_new = [], []
        for item in posts:
            result = self._write_one([item], [], version, stop)
            post_new.append(bool(result and result.post_is_new[0]))
        for event in interactions:
            result = self._write_one([], [event], version, stop)
            event_new.append(bool(result and result.interaction_is_new[0]))
        return WriteResult(post_new, event_new)

    def _write_one(self, posts, interactions, version, stop):  # type: ignore[no-untyped-def]
        try:
            result = self._write_with_retry(posts, version, interactions, stop, split=False)
        except Exception as e:  # this record is the culprit: counted and logged, not retried
            topic = self.s.posts_topic if posts else self.s.interactions_topic
            self.metrics.invalid.labels(topic, "store_error").inc()
            log.error("record not storable, skipped: %r (%s)", (posts or interactions)[0], e)
            return None
        if result is None:  # stopping while Redis is down: the batch is not committed
            raise InterruptedError("stopping mid-batch")
        return result

    def _learn(self, posts: list[Post]) -> None:
        """Best effort: a failure is logged and its tagged posts counted, never raised (the
        stored effect is what counts)."""
        try:
            self._observe_and_offer(posts)
        except Exception:
            log.exception("vocabulary update failed for a batch")
            self.metrics.train_skipped.labels("error").inc(sum(1 for p in posts if p.tags))

    def _observe_and_offer(self, posts: list[Post]) -> None:
        assert self.trainer is not None
        online = self.hub.online
        for post in posts:
            online.observe(post, clock=post.ts or time.time())
        # Never waits: what training cannot take is counted by the trainer
        # (tagspace_training_posts_skipped_total{reason="queue_full"}), ingestion goes on.
        self.trainer.offer([p for p in posts if p.tags])
        self.metrics.vocab.labels("words").set(online.words.size)
        self.metrics.vocab.labels("tags").set(online.tags.size)
        self.metrics.vocab_evictions.labels("words").set(online.words.evictions)
        self.metrics.vocab_evictions.labels("tags").set(online.tags.evictions)

    def _commit(self, batch: dict) -> None:
        assert self.consumer is not None
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
                   for tp, records in batch.items() if records}
        try:
            self.consumer.commit(offsets)
            self.metrics.commits.labels("ok").inc()
        except KafkaError as e:  # a rebalance: the records come again, with no effect
            self.metrics.commits.labels("failed").inc()
            log.warning("offset commit failed: %s", e)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if self.consumer is None or now - self._last_lag < LAG_EVERY_S:
            return
        self._last_lag = now
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)  # exact on Tansu, unlike end_offsets()
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is None:
                continue
            if high < position:  # the log restarted below us (topic recreated, broker
                # that kept nothing): read it again from the start; replays change nothing
                log.warning("%s is behind our position (%d < %d): reading it from the start",
                            tp, high, position)
                self.consumer.seek_to_beginning(tp)
                continue
            lag = high - position
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, capped at 5 s."""
    return random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2 ** min(attempt, 10))
