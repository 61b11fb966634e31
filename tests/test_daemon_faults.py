"""Faults against real servers: Redis stopped mid-stream, the broker restarted."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from daemon.embedded import create_topics, start_redis, start_tansu
from daemon.service import Daemon
from tests.streams import cooking_records, metric, send, settings_for, wait_until

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

        def stored() -> int:
            try:
                return daemon.store.count_posts()
            except redis.RedisError:  # BusyLoadingError while Redis replays its AOF
                return -1
        wait_until(lambda: stored() == 3000, 60, "every post after recovery")
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
        # fewer records than before: every partition restarts below the daemon's position
        # (the test broker keeps nothing; a real broker never moves offsets back)
        later = cooking_records(40, offset=5000)
        send(bootstrap, settings.posts_topic, [*later, b"not json"])
        wait_until(lambda: daemon.store.count_posts() == 240, 90, "posts after the restart")
        wait_until(lambda: daemon.metrics.dead_lettered.labels(
            settings.posts_topic)._value.get() == 1, 60, "a dead letter after the restart")
    finally:
        daemon.shutdown()
        daemon.store.clear()
        tansu.stop()


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path,
                                                                            monkeypatch):
    import tagspace.checkpoint as checkpoint_module
    from daemon.model_hub import ModelHub
    from tests.test_daemon_units import CAP, SMALL, TRAIN

    hub = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL)
    hub.checkpoint()  # version 2, complete

    def crash(*args, **kwargs):  # the process dies half-way through the weights
        raise SystemExit("killed while writing")
    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(SystemExit):
        hub.checkpoint()
    monkeypatch.undo()
    again = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL)
    assert (again.source, again.version) == ("checkpoint", 2)
    assert not list((tmp_path / "m" / "checkpoints").glob(".v*"))  # no half-written leftovers


def test_a_full_disk_at_checkpoint_time_is_logged_and_counted_and_serving_goes_on(
        broker, redis_url, tmp_path, monkeypatch, caplog):
    import errno

    import daemon.model_hub as hub_module
    from tests.test_online import post

    # the scorer of the daemon's own process: not started, nothing serves over HTTP
    settings = settings_for(broker, redis_url, tmp_path / "model", serve_process=False)
    daemon = Daemon(settings)
    known = {"baking", "bread", "garlic", "pasta"}
    for i in range(3):  # min_tag_count 2: each tag gets a row
        daemon.hub.online.observe(post(i, "garlic bread in the oven", ["bread", "garlic"]), i)
        daemon.hub.online.observe(post(9 + i, "bake pasta with garlic", ["baking", "pasta"]), i)
    before = daemon.scorer.suggest("garlic bread", 3, None)
    assert len(before) == 3 and {tag for tag, *_ in before} <= known

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hub_module, "save_checkpoint", full)
    version = daemon.hub.version
    assert daemon.checkpoint() is False
    assert daemon.metrics.checkpoints.labels("failed")._value.get() == 1
    assert daemon.metrics.checkpoints.labels("ok")._value.get() == 0
    assert daemon.hub.version == version and "No space left" in caplog.text
    assert not (tmp_path / "model" / "checkpoints" / "LATEST").exists()  # nothing published
    # still answering, with the same live model: 3 known tags, best first, as before
    after = daemon.scorer.suggest("garlic bread", 3, None)
    assert after == before
    assert [s for _, s, _ in after] == sorted((s for _, s, _ in after), reverse=True)
    daemon.redis.close()


def test_no_error_responses_while_model_versions_switch_and_posts_are_re_embedded(
        broker, redis_url, tmp_path):
    import threading

    from daemon.model_hub import ModelHub
    from tagspace.hogwild import TrainConfig
    from tagspace.model import ModelConfig
    from tagspace.online import Capacity

    settings = settings_for(broker, redis_url, tmp_path / "model", role="serve",
                            reload_interval_s=0.2)
    publisher = ModelHub(tmp_path / "model", Capacity(settings.word_capacity,
                                                      settings.tag_capacity),
                         TrainConfig(), ModelConfig(encoder="conv", dim=32, hidden=100,
                                                    dropout=0.0, word_tag_share=True))
    daemon = Daemon(settings)
    daemon.start()
    base = f"http://{settings.http_addr}"
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                statuses.append(c.post(base + "/v1/suggest", json={"text": "garlic"}).status_code)
                statuses.append(c.get(base + "/v1/feed/a1").status_code)
    try:
        send(broker, settings.posts_topic, cooking_records(1000))
        wait_until(lambda: daemon.store.count_posts() == 1000, 60, "posts")
        client = threading.Thread(target=hammer)
        client.start()
        for _ in range(4):  # a trainer publishing versions
            publisher.checkpoint()
            time.sleep(0.8)
        wait_until(lambda: daemon.hub.version == publisher.version, 10, "the last version")
        # the serving process loads the published versions too, and re-embeds
        wait_until(lambda: httpx.post(base + "/v1/suggest", json={"text": "garlic"}).json()[
            "model_version"] == publisher.version, 10, "the last version served")
        wait_until(lambda: metric(httpx.get(base + "/metrics").text,
                                  "tagspace_reembedded_posts_total") > 0, 10, "re-embedding")
        stop.set()
        client.join(10)
        assert len(statuses) > 20 and set(statuses) == {200}
    finally:
        stop.set()
        daemon.shutdown()
        daemon.store.clear()
