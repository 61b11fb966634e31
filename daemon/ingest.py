"""The Kafka side: consume posts and interactions, and run each poll's records through the chain
of ingestion steps (``daemon.chain``), whose order per role is ``build_chain``'s.

For the all and serve roles: decode every record (invalid ones become dead letters), send the
dead letters, embed the posts with the live model (scoring a sample first: prequential
evaluation), write posts and interactions to Redis in one idempotent pipeline, learn from the
new posts (all role), and only then commit each partition's offsets. So delivery is
at-least-once and the effect exactly-once. A step that cannot take a batch (Redis down) rejects
it; the consumer then pauses its partitions and keeps polling, so it stays in its group, until
the chain takes the batch again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from daemon.chain import Batch, MessageRejected, Step, backoff
from daemon.config import Settings
from daemon.ingest_steps import (
    Commit,
    Decode,
    Embed,
    Evaluate,
    Learn,
    PrequentialSample,
    SendDeadLetters,
)
from daemon.metrics import Metrics
from daemon.model_hub import ModelHub
from daemon.store import Store
from daemon.store_step import StoreBatch
from daemon.trainer import Trainer
from tagspace.precision import use_bf16

log = logging.getLogger(__name__)
LAG_EVERY_S = 1.0
REJECTED_POLL_MS = 50  # polling paused partitions while the chain rejects: keeps the group


def build_chain(s: Settings, consumer: KafkaConsumer, store: Store, hub: ModelHub,
                trainer: Trainer | None, metrics: Metrics,
                make_producer: Callable[[], KafkaProducer],
                on_redis_state: Callable[[bool], None] = lambda ok: None) -> Step:
    """The steps of a role, in order; the commit is always last."""
    sample = PrequentialSample(metrics)
    steps: list[Callable[[Step], Step]]
    if s.role == "trainer":  # every post, to train on; the serving replicas store them
        steps = [partial(Decode, settings=s, metrics=metrics),
                 partial(Evaluate, hub=hub, sample=sample)]
    else:
        steps = [partial(Decode, settings=s, metrics=metrics),
                 partial(SendDeadLetters, settings=s, metrics=metrics,
                         make_producer=make_producer),
                 partial(Embed, hub=hub, sample=sample if trainer is not None else None,
                         bf16=use_bf16(s.ingest_bf16)),
                 partial(StoreBatch, store=store, settings=s, metrics=metrics,
                         on_redis_state=on_redis_state)]
    if trainer is not None:
        steps.append(partial(Learn, hub=hub, trainer=trainer, metrics=metrics))
    chain: Step = Commit(consumer, metrics)
    for make in reversed(steps):
        chain = make(chain)
    return chain


def subscription(s: Settings) -> tuple[list[str], str]:
    """The topics a role consumes and its consumer group. The trainer role reads every post
    (a group of its own) to train on, and leaves Redis, dead letters and interactions to the
    serving replicas."""
    if s.role == "trainer":
        return [s.posts_topic], f"{s.group_id}-trainer"
    return [s.posts_topic, s.interactions_topic], s.group_id


class Ingestor:
    def __init__(self, settings: Settings, store: Store, hub: ModelHub,
                 trainer: Trainer | None, metrics: Metrics,
                 on_redis_state: Callable[[bool], None] = lambda ok: None):
        self.s = settings
        self.store, self.hub, self.trainer, self.metrics = store, hub, trainer, metrics
        self.on_redis_state = on_redis_state
        self.consumer: KafkaConsumer | None = None
        self._last_lag = 0.0
        self.failed = False  # set when the loop died of an unexpected error

    def _make_consumer(self) -> KafkaConsumer:
        topics, group = subscription(self.s)
        return KafkaConsumer(
            *topics, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.s.session_timeout_ms,
            heartbeat_interval_ms=self.s.heartbeat_interval_ms,
            max_poll_records=self.s.max_poll_records, max_poll_interval_ms=300_000,
            client_id="tagspace-daemon", **self.s.kafka_options())

    def _make_producer(self) -> KafkaProducer:
        # Not idempotent: an idempotent kafka-python producer breaks for good after a broker
        # restart. Dead letters are keyed by source offset, so a duplicate is recognisable.
        return KafkaProducer(acks="all", enable_idempotence=False, retries=5, linger_ms=5,
                             **self.s.kafka_options())

    def run(self, stop: threading.Event) -> None:
        attempt = 0
        while self.consumer is None:
            try:
                self.consumer = self._make_consumer()
            except KafkaError as e:  # the broker is not there yet: keep trying until stopped
                attempt += 1
                log.warning("cannot reach Kafka at %s (attempt %d): %s",
                            self.s.kafka_bootstrap, attempt, e)
                if stop.wait(backoff(attempt)):
                    return
        chain = build_chain(self.s, self.consumer, self.store, self.hub, self.trainer,
                            self.metrics, self._make_producer, self.on_redis_state)
        try:
            self._consume(self.consumer, chain, stop)
        finally:  # batches not through the chain are not committed: they come again
            chain.close()
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # closing a consumer whose broker is gone
                log.warning("consumer close failed", exc_info=True)

    def _consume(self, consumer: KafkaConsumer, chain: Step, stop: threading.Event) -> None:
        waiting: deque[Batch] = deque()  # polled, not yet taken by the chain, in poll order
        while not stop.is_set():
            try:
                records = consumer.poll(timeout_ms=REJECTED_POLL_MS if waiting else 200)
            except KafkaError as e:
                log.warning("Kafka poll failed: %s", e)
                stop.wait(1.0)
                continue
            if records:
                waiting.append(Batch(records))
            while waiting:
                try:
                    chain.submit(waiting[0])
                except MessageRejected:
                    # every time: a rebalance may have assigned partitions not yet paused
                    consumer.pause(*consumer.assignment())
                    break
                waiting.popleft()
            if not waiting and consumer.paused():
                consumer.resume(*consumer.paused())
            chain.poll()
            self._update_lag(consumer)

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag < LAG_EVERY_S:
            return
        self._last_lag = now
        for tp in consumer.assignment():
            high = consumer.highwater(tp)  # exact on Tansu, unlike end_offsets()
            if high is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is None:
                continue
            if high < position:  # the log restarted below us (topic recreated, broker
                # that kept nothing): read it again from the start; replays change nothing
                log.warning("%s is behind our position (%d < %d): reading it from the start",
                            tp, high, position)
                consumer.seek_to_beginning(tp)
                continue
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(high - position)
