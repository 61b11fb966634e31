"""Helpers of the daemon's integration tests: unique topics, producing, waiting, reading back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from daemon.config import Settings
from daemon.embedded import create_topics, free_port
from tagspace.dataset import read_posts

ROOT = Path(__file__).resolve().parents[1]
COOKING = ROOT / "data" / "cooking" / "cooking.train"


def settings_for(broker: str, redis_url: str, model_dir: Path, **overrides) -> Settings:
    """Settings with topics, group and Redis prefix of their own (tests share the servers)."""
    tag = uuid.uuid4().hex[:8]
    base = Settings(
        kafka_bootstrap=broker, redis_url=redis_url, http_addr=f"127.0.0.1:{free_port()}",
        model_dir=str(model_dir), posts_topic=f"posts-{tag}",
        interactions_topic=f"interactions-{tag}", dead_letter_topic=f"dead-{tag}",
        group_id=f"group-{tag}", redis_prefix=f"t{tag}", session_timeout_ms=6000,
        heartbeat_interval_ms=1000, dim=32, hidden=100, workers=1, word_capacity=20_000,
        tag_capacity=2000, checkpoint_interval_s=5.0, candidate_refresh_s=0.2,
        negatives=100)
    settings = replace(base, **overrides).validate()
    create_topics(broker, [settings.posts_topic, settings.interactions_topic,
                           settings.dead_letter_topic], settings.topic_partitions)
    return settings


def cooking_records(n: int, authors: int = 300, offset: int = 0) -> list[dict]:
    """Real posts (cooking.stackexchange titles) as contract records, with synthetic authors."""
    out = []
    for i, post in enumerate(read_posts(COOKING, require_tags=False)):
        if i < offset:
            continue
        if len(out) == n:
            break
        out.append({"post_id": f"c{i}", "user_id": f"a{i % authors}", "ts": 1.7e9 + i,
                    "text": " ".join(post.tokens), "tags": list(post.tags)})
    return out


def producer(broker: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=broker, linger_ms=10, enable_idempotence=False,
                         acks="all")


def send(broker: str, topic: str, values: Iterable[bytes | dict]) -> int:
    p = producer(broker)
    n = 0
    for v in values:
        # keyed as producers should: one post (or user) always lands on the same partition,
        # so its records keep their order
        key = None if isinstance(v, bytes) else (v.get("post_id") if "text" in v
                                                 else v.get("user_id"))
        p.send(topic, v if isinstance(v, bytes) else json.dumps(v).encode(),
               key=key.encode() if isinstance(key, str) else None)
        n += 1
    p.flush()
    p.close()
    return n


def read_topic(broker: str, topic: str, expected: int, timeout: float = 20.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(values) < expected:
        for records in consumer.poll(timeout_ms=300).values():
            values.extend(r.value for r in records)
    time.sleep(0.5)  # anything beyond `expected` would show up now
    for records in consumer.poll(timeout_ms=500).values():
        values.extend(r.value for r in records)
    consumer.close()
    return values


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
