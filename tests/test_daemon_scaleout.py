"""Two serving replicas in one consumer group on one broker: the partitions are split, both give
the same answers for the same model version, and when one is killed (SIGKILL) the other takes its
partitions; every record is applied exactly once in effect."""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import replace

import httpx
import pytest
import redis

from daemon.embedded import free_port
from daemon.records import POSITIVE_KINDS
from tagspace.checkpoint import Checkpoint, save_checkpoint
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace
from tests.streams import cooking_records, metric, settings_for, wait_until
from tests.test_daemon_process import events_for, produce_paced, start

pytestmark = pytest.mark.integration


def trained_model(path, records) -> None:  # type: ignore[no-untyped-def]
    """A small model, trained briefly: what a trainer would have published."""
    online = OnlineTagSpace.fresh(ModelConfig(encoder="conv", dim=32, hidden=100, dropout=0.0),
                                  Capacity(words=20_000, tags=2000), TrainConfig(lr=0.05))
    posts = [Post(r["post_id"], r["user_id"], r["ts"], tuple(r["text"].split()),
                  tuple(r["tags"])) for r in records]
    for i in range(0, len(posts), 16):
        for p in posts[i:i + 16]:
            online.observe(p, clock=p.ts or 0.0)
        online.train(posts[i:i + 16])
    save_checkpoint(path, Checkpoint(online.snapshot()))


def test_two_replicas_split_partitions_and_the_survivor_takes_over(broker, redis_url,
                                                                  tmp_path):
    records = cooking_records(8000)
    trained_model(tmp_path / "model", records[6000:])
    a = settings_for(broker, redis_url, tmp_path / "model", role="serve", dim=32, hidden=100,
                     word_capacity=20_000, tag_capacity=2000)
    b = replace(a, http_addr=f"127.0.0.1:{free_port()}")
    posts, events = records[:6000], events_for(records[:6000], 6000)
    r = redis.Redis.from_url(redis_url)
    p = a.redis_prefix
    first = start(a, tmp_path / "a.log")
    second = start(b, tmp_path / "b.log")
    feeder = produce_paced(broker, a, posts, events, seconds=16.0)
    try:
        def applied(s) -> float:  # type: ignore[no-untyped-def]
            text = httpx.get(f"http://{s.http_addr}/metrics", timeout=5).text
            return metric(text, "tagspace_records_applied_total", topic=s.posts_topic)
        wait_until(lambda: applied(a) > 200 and applied(b) > 200, 60, "both replicas working")
        text = "how do I keep pancakes fluffy"
        answers = [httpx.post(f"http://{s.http_addr}/v1/suggest", json={"text": text}).json()
                   for s in (a, b)]
        assert answers[0] == answers[1]  # same model version, same answer
        before = applied(b)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        feeder.join(60)

        def done() -> bool:
            return r.zcard(f"{p}:recent") == len(posts) and \
                sum(1 for _ in r.scan_iter(match=f"{p}:event:*", count=2000)) == len(events)
        wait_until(done, 120, "every record applied by the survivor", every=1.0)
        assert applied(b) > before + 500  # it took over the dead replica's partitions
        tags = Counter(t for post in posts for t in post["tags"])
        assert {k.decode(): int(v) for k, v in r.hgetall(f"{p}:tags").items()} == dict(tags)
        likes = Counter(e["post_id"] for e in events if e["kind"] in POSITIVE_KINDS)
        popularity = {k.decode(): int(v)
                      for k, v in r.zrange(f"{p}:pop", 0, -1, withscores=True)}
        assert popularity == dict(likes)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        for key in r.scan_iter(match=f"{p}:*", count=2000):
            r.delete(key)
