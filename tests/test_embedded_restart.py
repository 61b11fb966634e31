"""A restart of the embedded default (`tagspace daemon --embedded`): SIGTERM mid-stream, with a
backlog in the memory broker and a producer still sending, then the same command again. Every
record the broker acknowledged before the signal is applied exactly once, and of those it
acknowledged while the daemon stopped, all but the last milliseconds' (daemon.broker_spill)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from daemon.config import Settings
from daemon.embedded import free_port
from tests.streams import cooking_records, wait_until
from tests.test_daemon_process import EMBEDDED_FLAGS, TAGSPACE, embedded_env, wait_live

pytestmark = pytest.mark.integration


class AckedProducer(threading.Thread):
    """Sends posts at a rate until stopped or out of posts; keeps the ids the broker
    acknowledged (a send that fails or is never answered is not acknowledged)."""

    def __init__(self, broker: str, topic: str, posts: list[dict], rate: float):
        super().__init__(daemon=True)
        self.broker, self.topic, self.posts, self.rate = broker, topic, posts, rate
        self.acked: dict[str, float] = {}  # post id -> when the broker acknowledged it
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        p = KafkaProducer(bootstrap_servers=self.broker, acks="all", enable_idempotence=False,
                          retries=0, linger_ms=5, request_timeout_ms=3000, max_block_ms=1000)
        start = time.perf_counter()
        for i, post in enumerate(self.posts):
            if self.stop.is_set():
                break
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                future = p.send(self.topic, json.dumps(post).encode(),
                                key=post["post_id"].encode())
            except KafkaError:
                self.failed += 1
                continue
            future.add_callback(lambda _, pid=post["post_id"]: self.acked.__setitem__(
                pid, time.monotonic()))
            future.add_errback(lambda _: setattr(self, "failed", self.failed + 1))
        try:
            p.flush(timeout=5)
            p.close(timeout=5)
        except KafkaError:  # the broker is gone: what it did not answer was not acknowledged
            p.close(timeout=0)


def start_embedded(argv: list[str], env: dict[str, str], http: str,
                   log: Path) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=open(log, "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, env=env)
    wait_live(process, http, log, 90)
    return process


def test_sigterm_mid_stream_then_restart_applies_every_acknowledged_post_exactly_once(
        tmp_path):
    kafka, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = embedded_env(TAGSPACE_KAFKA_BOOTSTRAP=kafka, TAGSPACE_REDIS_URL=redis_url)
    argv = [str(TAGSPACE), "daemon", *EMBEDDED_FLAGS, "--model-dir", str(tmp_path / "model"),
            "--http-addr", http]
    defaults, log = Settings(), tmp_path / "daemon.log"
    p = defaults.redis_prefix
    posts = cooking_records(12_000)
    by_id = {post["post_id"]: post for post in posts}
    process = start_embedded(argv, env, http, log)
    assert "keeps its topics in memory" in log.read_text()  # said loudly at start-up
    r = redis.Redis.from_url(redis_url)
    producer = AckedProducer(kafka, defaults.posts_topic, posts, rate=1500)  # 8 s of posts
    producer.start()
    try:
        wait_until(lambda: r.zcard(f"{p}:recent") > 500, 60, "consuming under way")
        time.sleep(1.0)  # a backlog builds; the producer goes on sending through the stop
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
        took = time.monotonic() - sent
        producer.stop.set()
        producer.join(30)
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert took < 10.0, took
        assert "kept" in text and "held" in text, text[-3000:]  # a backlog was spilled
        acked = set(producer.acked)
        before = {pid for pid, at in producer.acked.items() if at < sent}
        during = acked - before  # the broker acknowledged these while the daemon stopped
        assert len(before) > 2000 and len(during) > 500, (len(before), len(during))

        process = start_embedded(argv, env, http, log)
        r = redis.Redis.from_url(redis_url)

        def stored() -> set[str]:
            return {k.decode()[len(p) + 6:] for k in r.scan_iter(match=f"{p}:post:*",
                                                                   count=5000)}
        wait_until(lambda: before <= stored(), 90, "every post acknowledged before the SIGTERM "
                   "stored", every=1.0)
        time.sleep(3.0)  # the rest of the spill lands too
        lost = during - stored()
        print(f"acknowledged {len(before)} before the SIGTERM and {len(during)} during the stop "
              f"({len(lost)} of those lost), {producer.failed} not acknowledged; SIGTERM exit "
              f"{took:.1f} s")
        # the producer never pauses, so the read runs to its 3 s limit: what the broker
        # acknowledged in the last milliseconds before it was killed is lost, and only that
        assert len(lost) <= max(20, len(during) // 50), (len(lost), len(during))
        time.sleep(2.0)  # anything applied twice would land now
        have = stored()
        tags = Counter(t for pid in have for t in by_id[pid]["tags"])
        counted = {k.decode(): int(v) for k, v in r.hgetall(f"{p}:tags").items()}
        assert counted == dict(tags)  # each post counted once, across the restart
        assert r.zcard(f"{p}:recent") == len(have)
    finally:
        producer.stop.set()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
