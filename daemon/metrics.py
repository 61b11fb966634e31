"""The daemon's Prometheus metrics (``tagspace_`` prefix, low-cardinality labels only).

One registry per daemon instance, so tests can run several in one process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # ingestion (the two contract metrics first)
        self.consumed = Counter("tagspace_records_consumed_total", "Records read from Kafka",
                                ["topic"], registry=r)
        self.dead_lettered = Counter("tagspace_records_dead_lettered_total",
                                     "Records sent to the dead-letter topic", ["topic"],
                                     registry=r)
        self.invalid = Counter("tagspace_records_invalid_total", "Invalid records by reason",
                               ["topic", "reason"], registry=r)
        self.duplicates = Counter("tagspace_records_duplicate_total",
                                  "Valid records already applied (replays): no effect",
                                  ["topic"], registry=r)
        self.applied = Counter("tagspace_records_applied_total",
                               "Valid records whose effect was stored", ["topic"], registry=r)
        self.freshness = Histogram("tagspace_processing_latency_seconds",
                                   "Kafka record timestamp -> embedding stored in Redis",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("tagspace_consumer_lag", "High watermark - position, per partition",
                         ["topic", "partition"], registry=r)
        self.paused = Gauge("tagspace_consumer_paused",
                            "1 while ingestion waits for Redis (backpressure; never for "
                            "training)", registry=r)
        self.commits = Counter("tagspace_offset_commits_total", "Offset commits",
                               ["result"], registry=r)
        # training
        self.train_examples = Counter("tagspace_training_examples_total",
                                      "Posts trained on (WARP)", registry=r)
        self.train_loss = Gauge("tagspace_training_loss", "Mean WARP loss of the last steps",
                                registry=r)
        self.warp_samples = Gauge("tagspace_warp_samples_per_example",
                                  "WARP negatives drawn per example (last steps)", registry=r)
        self.train_queue = Gauge("tagspace_training_queue_posts", "Posts waiting for training",
                                 registry=r)
        self.train_skipped = Counter(
            "tagspace_training_posts_skipped_total",
            "Tagged posts not trained on, by reason: queue_full, tag_not_admitted, "
            "too_few_tags, nonfinite, exploding_loss (their step was dropped), stopping, error",
            ["reason"], registry=r)
        self.train_dropped = Counter(
            "tagspace_training_steps_dropped_total",
            "Training steps computed but not applied: nonfinite (loss, embedding or gradient) "
            "or exploding_loss (far above its running mean)", ["reason"], registry=r)
        self.train_stale_rows = Counter(
            "tagspace_training_stale_rows_total",
            "Row updates skipped: the row was given to another token during the step",
            registry=r)
        self.train_lag = Gauge(
            "tagspace_training_lag_seconds",
            "Seconds from a tagged post's ingestion to the training step on it (last step; the "
            "training process)", registry=r)
        self.train_yielded = Counter(
            "tagspace_training_yielded_seconds_total",
            "Seconds training steps waited for the HTTP requests in flight", registry=r)
        self.trainer_restarts = Counter(
            "tagspace_trainer_restarts_total",
            "Times the training process died and was restarted (its weights kept)", registry=r)
        self.server_restarts = Counter(
            "tagspace_server_restarts_total",
            "Times the serving process (the HTTP API) died and was started again", registry=r)
        self.online_p1 = Gauge("tagspace_online_p_at_1",
                               "Prequential P@1 over the last window of posts", registry=r)
        self.online_r10 = Gauge("tagspace_online_r_at_10",
                                "Prequential R@10 over the last window of posts", registry=r)
        self.evaluated = Counter("tagspace_online_evaluated_posts_total",
                                 "Posts scored before training on them", registry=r)
        # model
        self.model_version = Gauge("tagspace_model_version", "Current model version",
                                   registry=r)
        self.model_timestamp = Gauge("tagspace_model_version_timestamp_seconds",
                                     "Unix time the current version was made (age = now - "
                                     "this)", registry=r)
        self.model_age = Gauge("tagspace_model_age_seconds",
                               "Seconds since the current model version was made", registry=r)
        self.vocab = Gauge("tagspace_vocabulary_size", "Tokens in use", ["kind"], registry=r)
        self.vocab_evictions = Gauge("tagspace_vocabulary_evictions",
                                     "Tokens evicted (least recently seen) since start",
                                     ["kind"], registry=r)
        self.checkpoints = Counter("tagspace_checkpoints_total",
                                   "Checkpoints: ok, failed, or diverged (refused: "
                                   "non-finite weights)", ["result"], registry=r)
        self.reembedded = Counter("tagspace_reembedded_posts_total",
                                  "Stored embeddings refreshed with a newer version",
                                  registry=r)
        # Redis and API
        self.redis_latency = Histogram("tagspace_redis_operation_seconds",
                                       "Redis round trips", ["operation"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.redis_errors = Counter("tagspace_redis_errors_total", "Failed Redis operations",
                                    ["operation"], registry=r)
        self.api_latency = Histogram("tagspace_api_request_seconds", "HTTP API latency",
                                     ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.suggest_batch = Histogram(
            "tagspace_suggest_batch_size", "Suggestions answered by one call (requests that "
            "waited together on a serving process's event loop)",
            buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.api_disconnects = Counter(
            "tagspace_api_client_disconnects_total",
            "Requests whose client hung up before its body was complete", registry=r)
        self.api_timeouts = Counter(
            "tagspace_api_requests_timed_out_total",
            "Connections closed because a request did not fully arrive within "
            "request_timeout_s", registry=r)
        self.feed_candidates = Gauge("tagspace_feed_candidates",
                                     "Posts the feeds rank (the newest recent_posts)", registry=r)
        self.ready = Gauge("tagspace_ready", "1 when Kafka, Redis and a model are available",
                           registry=r)

    def observe_redis(self, operation: str, seconds: float, failed: bool) -> None:
        self.redis_latency.labels(operation).observe(seconds)
        if failed:
            self.redis_errors.labels(operation).inc()


# Gauges the serving process sets (the daemon's process holds their defaults).
SERVING_GAUGES = frozenset({"tagspace_feed_candidates"})


def merge_families(ours: Iterable[Metric], theirs: Iterable[Metric],
                   their_gauges: frozenset[str] = SERVING_GAUGES) -> list[Metric]:
    """Two processes' metrics as one exposition: counters and histograms summed per series;
    a gauge is the value of the process that sets it: theirs for ``their_gauges``, else ours
    (theirs where only they have the series)."""
    merged = {}
    for family in ours:
        merged[family.name] = copy = Metric(family.name, family.documentation, family.type,
                                            family.unit)
        copy.samples = list(family.samples)
    for family in theirs:
        mine = merged.get(family.name)
        if mine is None:
            merged[family.name] = family
            continue
        at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)}
        for sample in family.samples:
            i = at.get((sample.name, tuple(sorted(sample.labels.items()))))
            if i is None:
                mine.samples.append(sample)
            elif family.type == "gauge":
                if family.name in their_gauges:
                    mine.samples[i] = sample
            elif not sample.name.endswith("_created"):
                mine.samples[i] = mine.samples[i]._replace(
                    value=mine.samples[i].value + sample.value)
    return list(merged.values())


class Exposition:
    """``generate_latest``'s registry: families collected elsewhere."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class RollingRate:
    """Mean of the last ``size`` values (online P@1 and R@10 over a window of posts)."""

    def __init__(self, size: int = 1000):
        self.values: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, hits: float, total: float) -> None:
        self.values.append((hits, total))

    def rate(self) -> float:
        total = sum(t for _, t in self.values)
        return sum(h for h, _ in self.values) / total if total else 0.0
