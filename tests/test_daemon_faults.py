"""Faults against real servers: Redis stopped mid-stream, the broker restarted."""

from __future__ import annotations

import time

import httpx
import pytest

from daemon.embedded import create_topics, start_redis, start_tansu
from daemon.service import Daemon
from tests.streams import cooking_records, send, settings_for, wait_until

pytestmark = pytest.mark.integration


def test_redis_stopped_for_10_s_stops_commits_then_resumes_and_loses_nothing(broker, tmp_path):
    redis_dir = tmp_path / "redis"
    server = start_redis(workdir=str(redis_dir))
    port = server.port
    settings = settings_for(broker, f"redis://127.0.0.1:{port}/0", tmp_path / "model",
                            train=False)
    daemon = Daemon(settings)
    daemon.start()
    base = f"http://{settings.http_addr}"
    posts = cooking_records(3000)
    try:
        send(broker, settings.posts_topic, posts[:1000])
        wait_until(lambda: daemon.store.count_posts() == 1000, 60, "the first posts")
        server.stop()  # SIGTERM: Redis fsyncs its AOF and exits
        send(broker, settings.posts_topic, posts[1000:])
        time.sleep(2.0)
        commits = daemon.metrics.commits.labels("ok")._value.get()
        wait_until(lambda: httpx.get(base + "/readyz").status_code == 503, 15, "not ready")
        assert "redis" in httpx.get(base + "/readyz").json()["error"]
        assert httpx.get(base + "/v1/posts/c1").status_code == 503  # a JSON error, not a 500
        time.sleep(8.0)
        assert daemon.metrics.commits.labels("ok")._value.get() == commits  # nothing committed
        assert daemon.metrics.redis_errors.labels("write")._value.get() > 0
        server = start_redis(port=port, workdir=str(redis_dir))  # same port, same AOF
        wait_until(lambda: daemon.store.count_posts() == 3000, 60, "every post after recovery")
        wait_until(lambda: httpx.get(base + "/readyz").status_code == 200, 15, "ready again")
        applied = daemon.metrics.applied.labels(settings.posts_topic)._value.get()
        assert applied == 3000  # each post applied once
    finally:
        daemon.shutdown()
        if server.process.poll() is None:
            daemon.store.clear()
            server.stop()


def test_the_daemon_reconnects_by_itself_after_a_broker_restart(redis_url, tmp_path):
    tansu = start_tansu()
    bootstrap = f"127.0.0.1:{tansu.port}"
    settings = settings_for(bootstrap, redis_url, tmp_path / "model", train=False)
    topics = [settings.posts_topic, settings.interactions_topic, settings.dead_letter_topic]
    daemon = Daemon(settings)
    daemon.start()
    try:
        send(bootstrap, settings.posts_topic, cooking_records(200))
        wait_until(lambda: daemon.store.count_posts() == 200, 60, "posts before the restart")
        port = tansu.port
        tansu.stop()
        time.sleep(3.0)
        tansu = start_tansu(port)  # memory storage: topics, data and offsets are gone
        create_topics(bootstrap, topics, settings.topic_partitions)
        later = cooking_records(200, offset=5000)
        send(bootstrap, settings.posts_topic, [*later, b"not json"])
        wait_until(lambda: daemon.store.count_posts() == 400, 90, "posts after the restart")
        wait_until(lambda: daemon.metrics.dead_lettered.labels(
            settings.posts_topic)._value.get() == 1, 30, "a dead letter after the restart")
    finally:
        daemon.shutdown()
        daemon.store.clear()
        tansu.stop()
