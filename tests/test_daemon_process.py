"""The daemon as a process (`tagspace daemon`): kill -9 mid-stream, SIGTERM under load.

Real Tansu broker and Redis from the session fixtures. Exactly-once effect is checked where a
replay would show: per-tag counts and per-post popularity are increments, so a record applied
twice would count twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from daemon.config import Settings, settings_argv
from daemon.records import POSITIVE_KINDS
from tests.streams import cooking_records, producer, settings_for, wait_until

pytestmark = pytest.mark.integration
TAGSPACE = Path(sys.executable).parent / "tagspace"


def daemon_argv(settings: Settings) -> list[str]:
    return [str(TAGSPACE), "daemon", "--quiet", *settings_argv(settings)]


def start(settings: Settings, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(daemon_argv(settings), stdout=open(log, "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT)
    url = f"http://{settings.http_addr}/livez"

    def up() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(up, 60, "the daemon's HTTP API")
    return process


def events_for(posts: list[dict], n: int) -> list[dict]:
    kinds = sorted(POSITIVE_KINDS) + ["view", "hide"]
    return [{"event_id": f"k{j}", "user_id": f"r{j % 300}",
             "post_id": posts[(j * 7919) % len(posts)]["post_id"], "kind": kinds[j % 6],
             "ts": 1.7e9 + j} for j in range(n)]


def produce_paced(broker: str, settings: Settings, posts: list[dict], events: list[dict],
                  seconds: float) -> threading.Thread:
    import json

    def run() -> None:
        p = producer(broker)
        pairs = list(zip(posts, events, strict=True))
        start_time = time.perf_counter()
        for i, (post, event) in enumerate(pairs):
            delay = start_time + i * seconds / len(pairs) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            p.send(settings.posts_topic, json.dumps(post).encode())
            p.send(settings.interactions_topic, json.dumps(event).encode())
        p.flush()
        p.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_twice_mid_stream_loses_nothing_and_duplicates_nothing(broker, redis_url,
                                                                      tmp_path):
    settings = settings_for(broker, redis_url, tmp_path / "model", checkpoint_interval_s=2.0)
    posts, log = cooking_records(10_000), tmp_path / "daemon.log"
    events = events_for(posts, 10_000)
    r = redis.Redis.from_url(redis_url)
    p = settings.redis_prefix
    process = start(settings, log)
    feeder = produce_paced(broker, settings, posts, events, seconds=12.0)
    try:
        for _ in range(2):
            wait_until(lambda: r.zcard(f"{p}:recent") > 1000, 60, "progress before a kill")
            time.sleep(2.0)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            process = start(settings, log)
        feeder.join(60)

        def caught_up() -> bool:
            return r.zcard(f"{p}:recent") == len(posts) and \
                sum(1 for _ in r.scan_iter(match=f"{p}:event:*", count=2000)) == len(events)
        wait_until(caught_up, 120, "every record applied", every=1.0)
        time.sleep(2.0)  # anything applied twice would land now

        assert sum(1 for _ in r.scan_iter(match=f"{p}:post:*", count=2000)) == len(posts)
        tags = Counter(t for post in posts for t in post["tags"])
        stored = {k.decode(): int(v) for k, v in r.hgetall(f"{p}:tags").items()}
        assert stored == dict(tags)  # each post counted once, despite the replays
        likes = Counter(e["post_id"] for e in events if e["kind"] in POSITIVE_KINDS)
        popularity = {k.decode(): int(v) for k, v in r.zrange(f"{p}:pop", 0, -1,
                                                              withscores=True)}
        assert popularity == dict(likes)
        histories = {}
        for e in events:
            if e["kind"] in POSITIVE_KINDS:
                histories.setdefault(e["user_id"], set()).add(e["post_id"])
        for user, liked in list(histories.items())[:50]:
            got = [x.decode() for x in r.zrange(f"{p}:hist:{user}", 0, -1)]
            assert sorted(got) == sorted(liked)
        assert (tmp_path / "model" / "checkpoints" / "LATEST").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        _clear(r, p)


def test_sigterm_under_load_exits_0_within_10_s_with_processed_offsets_committed(
        broker, redis_url, tmp_path):
    from kafka.admin import KafkaAdminClient

    settings = settings_for(broker, redis_url, tmp_path / "model")
    posts, log = cooking_records(8000), tmp_path / "daemon.log"
    r = redis.Redis.from_url(redis_url)
    p = settings.redis_prefix
    process = start(settings, log)
    feeder = produce_paced(broker, settings, posts, events_for(posts, len(posts)), 8.0)
    try:
        wait_until(lambda: r.zcard(f"{p}:recent") > 1500, 60, "load")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
        took = time.monotonic() - sent
        assert code == 0, log.read_text()[-3000:]
        assert took < 10.0
        feeder.join(30)
        admin = KafkaAdminClient(bootstrap_servers=broker)
        offsets = admin.list_group_offsets({settings.group_id: None})[settings.group_id]
        admin.close()
        committed = sum(o.offset for tp, o in offsets.items()
                        if tp.topic == settings.posts_topic and o.offset > 0)
        stored = r.zcard(f"{p}:recent")
        # every processed post is committed, and nothing is committed that was not stored
        assert committed == stored, (committed, stored)
        assert (tmp_path / "model" / "checkpoints" / "LATEST").is_file()  # final checkpoint
    finally:
        if process.poll() is None:
            process.kill()
        _clear(r, p)


def _clear(r: redis.Redis, prefix: str) -> None:
    for key in r.scan_iter(match=f"{prefix}:*", count=2000):
        r.delete(key)
