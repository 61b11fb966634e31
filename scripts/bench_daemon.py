#!/usr/bin/env python
"""Daemon benchmarks on real servers (embedded Tansu + Redis), the daemon as its own process.

- freshness: posts produced at --rates posts/s for --seconds each; a watcher reads the Redis
  arrivals stream (XREAD) and times Kafka send -> embedding visible in Redis, per post.
- ingest: --posts posts waiting in Kafka; sustained posts/s until all are stored, with online
  training on and off. Also Redis memory per post and per user (MEMORY USAGE, INFO).
- serving: moved to scripts/bench_serving.py (open-loop load on a trained model of real data,
  a sweep of rates, the synthetic scale); `bench_daemon.py serving` says so.

Writes JSON to --out. Usage: python scripts/bench_daemon.py all --out docs/results/daemon
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import Settings, settings_argv  # noqa: E402
from daemon.embedded import create_topics, free_port, start_redis, start_tansu  # noqa: E402
from daemon.store import Store  # noqa: E402
from tagspace.dataset import read_posts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TAGSPACE = Path(sys.executable).parent / "tagspace"
COOKING = [p for p in read_posts(ROOT / "data/cooking/cooking.train")]


def records(n: int, prefix: str) -> list[dict]:
    out = []
    for i in range(n):
        p = COOKING[i % len(COOKING)]
        out.append({"post_id": f"{prefix}{i}", "user_id": f"u{i % 2000}", "ts": time.time(),
                    "text": " ".join(p.tokens), "tags": list(p.tags)})
    return out


def scratch(name: str) -> Path:
    """A fresh work folder for one run (servers' data, model, logs)."""
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"tagspace-{name}-{os.getpid()}"
    work.mkdir(parents=True)
    return work


class Stack:
    def __init__(self, workdir: Path):
        self.tansu = start_tansu()
        self.redis = start_redis(workdir=str(workdir / "redis"), appendonly=False)
        self.bootstrap = f"127.0.0.1:{self.tansu.port}"
        self.redis_url = f"redis://127.0.0.1:{self.redis.port}/0"

    def settings(self, name: str, model_dir: Path, **kw) -> Settings:  # type: ignore[no-untyped-def]
        s = Settings(kafka_bootstrap=self.bootstrap, redis_url=self.redis_url,
                     http_addr=f"127.0.0.1:{free_port()}", model_dir=str(model_dir),
                     posts_topic=f"{name}.posts", interactions_topic=f"{name}.interactions",
                     dead_letter_topic=f"{name}.dead", group_id=name, redis_prefix=name)
        s = replace(s, **kw).validate()
        create_topics(self.bootstrap, [s.posts_topic, s.interactions_topic,
                                       s.dead_letter_topic], s.topic_partitions)
        return s

    def stop(self) -> None:
        self.tansu.stop()
        self.redis.stop()


def start_daemon(settings: Settings, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(TAGSPACE), "daemon", "--quiet", *settings_argv(settings)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(f"http://{settings.http_addr}/readyz", timeout=1).status_code == 200:
                time.sleep(4)  # the consumer group join
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("daemon not ready")


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(20)


class ArrivalWatcher(threading.Thread):
    """Time at which each post id appears in the Redis arrivals stream."""

    def __init__(self, redis_url: str, prefix: str):
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(redis_url)
        self.key = f"{prefix}:arrivals"
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last = "0"
        while not self.stop.is_set():
            rows = self.r.xread({self.key: last}, count=5000, block=200)
            now = time.time()
            for _, entries in rows:
                for sid, fields in entries:
                    self.seen[fields[b"id"].decode()] = now
                    last = sid


def producer(bootstrap: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, enable_idempotence=False)


def steady_rate(times: list[float]) -> float | None:
    """Arrivals per second between the 10th and the 90th percentile of the sorted ``times``
    (the steady state: no start-up, no tail)."""
    a, b = times[len(times) // 10], times[len(times) * 9 // 10]
    return 0.8 * len(times) / (b - a) if b > a else None


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4) if values else float("nan")


def bench_freshness(stack: Stack, work: Path, rates: list[int], seconds: float) -> dict:
    out = {}
    for rate in rates:
        name = f"fresh{rate}"
        s = stack.settings(name, work / name)
        proc = start_daemon(s, work / f"{name}.log")
        watcher = ArrivalWatcher(stack.redis_url, s.redis_prefix)
        watcher.start()
        prod = producer(stack.bootstrap)
        sent: dict[str, float] = {}
        recs = records(int(rate * seconds), name)
        start = time.perf_counter()
        for i, rec in enumerate(recs):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[rec["post_id"]] = time.time()
            prod.send(s.posts_topic, json.dumps(rec).encode())
        prod.flush()
        deadline = time.monotonic() + 120
        while len(watcher.seen) < len(recs) and time.monotonic() < deadline:
            time.sleep(0.2)
        watcher.stop.set()
        lat = [watcher.seen[k] - t for k, t in sent.items() if k in watcher.seen]
        achieved = len(recs) / (time.perf_counter() - start)
        metrics = httpx.get(f"http://{s.http_addr}/metrics").text
        stop_daemon(proc)
        out[str(rate)] = {"posts": len(recs), "stored": len(lat), "p50_s": pct(lat, 50),
                          "p99_s": pct(lat, 99), "max_s": pct(lat, 100),
                          "offered_posts_per_s": round(achieved, 1),
                          "training_examples": _metric(metrics, "tagspace_training_examples_total")}
        print(f"freshness at {rate}/s: {out[str(rate)]}", flush=True)
    return out


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def bench_ingest(stack: Stack, work: Path, n: int) -> dict:
    out = {}
    for train in (False, True):
        name = f"ingest{'train' if train else 'notrain'}"
        s = stack.settings(name, work / name, train=train)
        prod = producer(stack.bootstrap)
        for rec in records(n, name):
            prod.send(s.posts_topic, json.dumps(rec).encode())
        prod.flush()
        watcher = ArrivalWatcher(stack.redis_url, s.redis_prefix)
        watcher.start()
        proc = start_daemon(s, work / f"{name}.log")
        deadline = time.monotonic() + 600
        while len(watcher.seen) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        watcher.stop.set()
        times = sorted(watcher.seen.values())
        rate = steady_rate(times) or float("nan")
        metrics = httpx.get(f"http://{s.http_addr}/metrics").text
        stop_daemon(proc)
        out[name] = {"posts": n, "stored": len(times), "posts_per_s": round(rate, 1),
                     "training_examples": _metric(metrics, "tagspace_training_examples_total")}
        print(f"ingest, training {'on' if train else 'off'}: {out[name]}", flush=True)
    out["memory"] = redis_memory(stack.redis_url, "ingestnotrain", n)
    print(f"redis memory: {out['memory']}", flush=True)
    return out


def redis_memory(url: str, prefix: str, n_posts: int) -> dict:
    r = redis.Redis.from_url(url)
    posts = [k for k in r.scan_iter(match=f"{prefix}:post:*", count=1000)][:500]
    per_post = np.mean([r.memory_usage(k, samples=0) for k in posts])
    # each tagged post also sits in its author's newest-posts list (personalized suggestions)
    authored = sum(r.memory_usage(k, samples=0) or 0
                   for k in r.scan_iter(match=f"{prefix}:authored:*", count=1000))
    # a user with a full history (200 positive interactions) and a seen set of the same size
    store = Store(r, "memuser")
    from daemon.records import Interaction

    events = [Interaction(f"m{i}", "heavy", f"p{i}", "like", 1.7e9 + i) for i in range(200)]
    store.write([], 1, events)
    per_user = sum(r.memory_usage(k, samples=0) or 0 for k in
                   (store.history_key("heavy"), store.seen_key("heavy")))
    per_event = np.mean([r.memory_usage(store.event_key(f"m{i}"), samples=0)
                         for i in range(50)])
    store.clear()
    return {"bytes_per_post_hash": round(float(per_post)),
            "bytes_per_post_in_authored_lists": round(authored / max(n_posts, 1)),
            "bytes_per_user_200_history": int(per_user),
            "bytes_per_interaction_dedup_key": round(float(per_event)),
            "note": f"d=64 float32 embedding + metadata; {len(posts)} post keys sampled"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("freshness", "ingest", "serving", "all"))
    p.add_argument("--rates", default="200,1000")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--posts", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=Path("runs/bench_daemon"))
    args = p.parse_args()
    if args.what == "serving":
        sys.exit("serving moved to scripts/bench_serving.py (open loop, a trained model of real "
                 "data, a sweep of rates, synthetic scale): see\n  .venv/bin/python "
                 "scripts/bench_serving.py --help")
    args.out.mkdir(parents=True, exist_ok=True)
    work = scratch("bench")
    stack = Stack(work)
    report: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}",
                    "python": platform.python_version()}
    try:
        if args.what in ("freshness", "all"):
            report["freshness"] = bench_freshness(
                stack, work, [int(r) for r in args.rates.split(",")], args.seconds)
        if args.what in ("ingest", "all"):
            report["ingest"] = bench_ingest(stack, work, args.posts)
    finally:
        stack.stop()
    path = args.out / f"bench_daemon_{args.what}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
