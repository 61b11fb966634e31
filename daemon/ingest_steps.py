"""The steps of ingestion (``daemon.chain``) but the store: decode, dead-letter, embed or
evaluate, learn, commit. Each does one thing to a ``Batch``; their order is in
``daemon.ingest.build_chain``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from daemon.chain import Batch, MessageRejected, Retry, Stage, Step
from daemon.config import Settings
from daemon.metrics import Metrics, RollingRate
from daemon.model_hub import ModelHub
from daemon.records import InvalidRecord, dead_letter, decode_interaction, decode_post
from daemon.trainer import Trainer
from tagspace.online import Prediction

log = logging.getLogger(__name__)
EVAL_PER_BATCH = 64  # prequential evaluation: at most this many posts per batch are scored
EVAL_PER_S = 20.0  # and at most this many per second: a sample is enough for the P@1 gauges


class Decode(Stage):
    """Records to posts and interactions; an invalid one becomes a dead letter with its reason
    (counted), never an error: a decoder bug must not stop the stream either."""

    def __init__(self, next_step: Step, settings: Settings, metrics: Metrics):
        super().__init__(next_step)
        self.s, self.metrics = settings, metrics

    def apply(self, batch: Batch) -> None:
        for tp, records in batch.records.items():
            for record in records:
                self._decode(tp.topic, record, batch)

    def _decode(self, topic: str, record: Any, out: Batch) -> None:
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
        except Exception as e:
            reason = str(e) if isinstance(e, InvalidRecord) else "decode_error"
            if reason == "decode_error":
                log.exception("decoding %s[%d]@%d failed", topic, record.partition,
                              record.offset)
            self.metrics.invalid.labels(topic, reason).inc()
            out.dead.append((topic, dead_letter(record.value, reason, topic, record.partition,
                                                record.offset, self.s.max_record_bytes)))


class SendDeadLetters(Stage):
    """The batch's dead letters to their topic, acknowledged before the batch goes on (so
    before its commit). A broker that fails rejects the batch (retried with backoff); one that
    refuses them for good (3 non-retriable errors) gets them counted as refused, never waited
    for."""

    def __init__(self, next_step: Step, settings: Settings, metrics: Metrics,
                 make_producer: Callable[[], KafkaProducer]):
        super().__init__(next_step)
        self.s, self.metrics, self.make_producer = settings, metrics, make_producer
        self.producer: KafkaProducer | None = None
        self.retry = Retry()

    def apply(self, batch: Batch) -> None:
        if not batch.dead:
            return
        if not self.retry.due():
            raise MessageRejected
        try:
            self._send([value for _, value in batch.dead])
        except KafkaError as e:
            self.retry.failed()
            log.warning("dead-letter send failed (attempt %d): %s", self.retry.attempts, e)
            self._drop_producer()  # a fresh one after broker trouble
            if e.retriable or self.retry.attempts < 3:
                raise MessageRejected from e
            log.error("dead letters refused by Kafka, skipped: %d records", len(batch.dead))
            self.metrics.invalid.labels(self.s.dead_letter_topic,
                                        "dead_letter_refused").inc(len(batch.dead))
        else:
            for topic, _ in batch.dead:
                self.metrics.dead_lettered.labels(topic).inc()
        self.retry.succeeded()

    def _send(self, values: Sequence[bytes]) -> None:
        if self.producer is None:
            self.producer = self.make_producer()
        futures = [self.producer.send(self.s.dead_letter_topic, v) for v in values]
        self.producer.flush(timeout=5)  # a broker restart: fail fast, rebuild the producer
        for f in futures:
            f.get(timeout=1)

    def _drop_producer(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=1)
            self.producer = None

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=2)
        super().close()


class PrequentialSample:
    """Online P@1 / R@10 of posts scored before any training on them, on a sample: a token
    bucket of ``EVAL_PER_S``, at most ``EVAL_PER_BATCH`` per batch."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.p1, self.r10 = RollingRate(), RollingRate()
        self._tokens, self._at = float(EVAL_PER_BATCH), time.monotonic()

    def budget(self) -> int:
        now = time.monotonic()
        self._tokens = min(float(EVAL_PER_BATCH), self._tokens + (now - self._at) * EVAL_PER_S)
        self._at = now
        return int(self._tokens)

    def record(self, predictions: Sequence[Prediction]) -> None:
        self._tokens -= len(predictions)
        for pred in predictions:
            self.p1.add(float(pred.hit_at_1), 1.0)
            self.r10.add(pred.found_at_10, pred.gold)
            self.metrics.evaluated.inc()
        if predictions:
            self.metrics.online_p1.set(self.p1.rate())
            self.metrics.online_r10.set(self.r10.rate())


class Embed(Stage):
    """Every post's embedding with the live model, and from the same forward pass the
    prequential scores of the sample's tagged posts (when this process trains)."""

    def __init__(self, next_step: Step, hub: ModelHub, sample: PrequentialSample | None,
                 bf16: bool = False):
        super().__init__(next_step)
        self.hub, self.sample, self.bf16 = hub, sample, bf16

    def apply(self, batch: Batch) -> None:
        batch.version = self.hub.version  # read first: a label never newer than the model
        budget = self.sample.budget() if self.sample is not None else 0
        batch.embeddings, predictions = self.hub.online.embed_and_evaluate(
            [p for p, _ in batch.posts], budget, self.bf16)
        if self.sample is not None:
            self.sample.record(predictions)


class Evaluate(Stage):
    """The trainer role: only the sample's tagged posts are encoded, for their prequential
    scores (the serving replicas embed and store every post)."""

    def __init__(self, next_step: Step, hub: ModelHub, sample: PrequentialSample):
        super().__init__(next_step)
        self.hub, self.sample = hub, sample

    def apply(self, batch: Batch) -> None:
        budget = self.sample.budget()
        tagged = [p for p, _ in batch.posts if p.tags][:budget]
        if tagged:
            self.sample.record(self.hub.online.embed_and_evaluate(tagged, budget)[1])


class Learn(Stage):
    """New posts into the vocabularies and their tagged ones offered to training, which never
    waits: what it cannot take it counts (``tagspace_training_posts_skipped_total``). Best
    effort: a failure is logged and its tagged posts counted, the batch still goes on."""

    def __init__(self, next_step: Step, hub: ModelHub, trainer: Trainer, metrics: Metrics):
        super().__init__(next_step)
        self.hub, self.trainer, self.metrics = hub, trainer, metrics

    def apply(self, batch: Batch) -> None:
        posts = batch.learnable()
        try:
            online = self.hub.online
            for post in posts:
                online.observe(post, clock=post.ts or time.time())
            self.trainer.offer([p for p in posts if p.tags])
            self.metrics.vocab.labels("words").set(online.words.size)
            self.metrics.vocab.labels("tags").set(online.tags.size)
            self.metrics.vocab_evictions.labels("words").set(online.words.evictions)
            self.metrics.vocab_evictions.labels("tags").set(online.tags.evictions)
        except Exception:
            log.exception("vocabulary update failed for a batch")
            self.metrics.train_skipped.labels("error").inc(sum(1 for p in posts if p.tags))


class Commit:
    """The last step: each partition's offsets past the batch. A failed commit (a rebalance)
    is counted; the records come again, with no effect."""

    def __init__(self, consumer: Any, metrics: Metrics):
        self.consumer, self.metrics = consumer, metrics

    def submit(self, batch: Batch) -> None:
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
                   for tp, records in batch.records.items() if records}
        try:
            self.consumer.commit(offsets)
            self.metrics.commits.labels("ok").inc()
        except KafkaError as e:
            self.metrics.commits.labels("failed").inc()
            log.warning("offset commit failed: %s", e)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass
