"""The daemon as a process (`tagspace daemon`): kill -9 mid-stream, SIGTERM under load, the
embedded servers' lifetime (they die with the daemon; a taken port is an error).

Real Tansu broker and Redis from the session fixtures (or the daemon's own, `--embedded`).
Exactly-once effect is checked where a replay would show: per-tag counts and per-post popularity
are increments, so a record applied twice would count twice.
"""

from __future__ import annotations

import os
import signal
import socket
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
from daemon.embedded import PortInUse, free_port, start_redis, wait_for_port
from daemon.records import POSITIVE_KINDS
from tests.streams import cooking_records, producer, settings_for, wait_until

pytestmark = pytest.mark.integration
TAGSPACE = Path(sys.executable).parent / "tagspace"


def daemon_argv(settings: Settings) -> list[str]:
    return [str(TAGSPACE), "daemon", "--quiet", *settings_argv(settings)]


def start(settings: Settings, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(daemon_argv(settings), stdout=open(log, "ab"),  # noqa: SIM115
                               stderr=subprocess.STDOUT)
    wait_live(process, settings.http_addr, log, 60)
    return process


def wait_live(process: subprocess.Popen, http_addr: str, log: Path, timeout: float) -> None:
    """Until the daemon's /livez answers; fails with its log's end if it exits first."""
    def up() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"http://{http_addr}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(up, timeout, "the daemon's HTTP API")


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


# The embedded servers' lifetime (`tagspace daemon --embedded`)
EMBEDDED_FLAGS = ["--embedded", "--dim", "16", "--hidden", "20", "--workers", "1",
                  "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000"]


def embedded_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSPACE_")}
    return {**env, **extra}


def children(pid: int) -> dict[int, str]:
    """pid -> command name of the live (not zombie) children of ``pid``, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry.name)] = comm
    return out


def alive(pid: int) -> bool:
    """Running (a zombie no init reaped yet is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_kill_9_of_an_embedded_daemon_takes_its_broker_and_redis_with_it(tmp_path):
    log = tmp_path / "daemon.log"
    http = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [str(TAGSPACE), "daemon", *EMBEDDED_FLAGS, "--model-dir", str(tmp_path / "model"),
         "--http-addr", http], stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        env=embedded_env())
    servers: dict[int, str] = {}
    try:
        wait_live(process, http, log, 90)
        # and the training and serving processes, multiprocessing's tracker
        servers = children(process.pid)
        names = sorted(n for n in servers.values() if not n.startswith("python"))
        assert len(names) == 2 and names[0].startswith("redis") and "tansu" in names[1], names
        assert len(servers) <= 5, servers
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in servers), 10,
                   f"the embedded servers and the trainer {servers} to exit after the daemon's "
                   "kill -9")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in servers:  # what the daemon left behind (before the fix: both)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("variable", "value", "server"), [
    ("TAGSPACE_KAFKA_BOOTSTRAP", "127.0.0.1:{port}", "Kafka broker"),
    ("TAGSPACE_REDIS_URL", "redis://127.0.0.1:{port}/0", "Redis server"),
], ids=["kafka", "redis"])
def test_an_embedded_start_on_a_taken_port_fails_naming_the_port_and_never_attaches(
        tmp_path, variable, value, server):
    with socket.socket() as taken:  # someone else's server on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        process = subprocess.Popen(
            [str(TAGSPACE), "daemon", *EMBEDDED_FLAGS, "--model-dir", str(tmp_path / "model"),
             "--http-addr", f"127.0.0.1:{free_port()}"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=embedded_env(**{variable: value.format(
                port=port)}))
        servers: dict[int, str] = {}
        try:
            deadline = started + 45
            while process.poll() is None and time.monotonic() < deadline:
                servers |= children(process.pid)
                time.sleep(0.2)
            assert process.poll() is not None, "still running: it attached to the port"
            out, err = process.communicate(5)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(10)
            for pid in servers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    assert process.returncode == 2, (out, err)
    assert f"127.0.0.1:{port}" in err and "already in use" in err and server in err, err
    assert variable in err  # how to get a free port instead
    assert "Traceback" not in err
    assert took < 15, took


def test_wait_for_port_never_takes_a_foreign_listener_for_the_child(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a child that lost the bind race and exits, as Redis and Tansu do on "address in use"
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}.*already in use"):
            wait_for_port("127.0.0.1", port, 10, child, "redis")
        child.wait(5)
        # a child alive but not listening: the port answering is not the child being ready
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            with pytest.raises(TimeoutError):
                wait_for_port("127.0.0.1", port, 1.5, child, "redis")
        finally:
            child.kill()
            child.wait(5)


def test_an_embedded_server_started_from_a_short_lived_thread_outlives_the_thread(tmp_path):
    # PR_SET_PDEATHSIG follows the forking *thread*: such starts go through a spawner thread
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(server=start_redis(
        workdir=str(tmp_path / "redis"), appendonly=False)))
    thread.start()
    thread.join(30)
    server = box["server"]
    try:
        time.sleep(1.0)
        assert server.process.poll() is None
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
            c.sendall(b"PING\r\n")
            assert c.recv(16).startswith(b"+PONG")
    finally:
        server.stop()
