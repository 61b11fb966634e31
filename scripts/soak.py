#!/usr/bin/env python
"""Soak: mixed load for --minutes (posts, interactions, API calls) against a daemon process on
embedded servers, recording the daemon's RSS, Redis memory and consumer lag every 10 s.

Writes soak.json and soak.png (the three series over time) into --out and prints the growth
between the first and the last third of the run.

Usage: python scripts/soak.py --minutes 10 --rate 100 --out docs/results/soak
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon import (  # noqa: E402
    Stack,
    producer,
    records,
    scratch,
    start_daemon,
    stop_daemon,
)

from daemon.records import POSITIVE_KINDS  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def lag(text: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tagspace_consumer_lag{"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0, help="posts/s (and as many events/s)")
    p.add_argument("--rps", type=float, default=10.0, help="API requests/s")
    p.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = scratch("soak")
    stack = Stack(work)
    settings = stack.settings("soak", work / "model", checkpoint_interval_s=60.0)
    proc = start_daemon(settings, work / "daemon.log")
    r = redis.Redis.from_url(stack.redis_url)
    base = f"http://{settings.http_addr}"
    stop = threading.Event()
    errors = {"api": 0}
    kinds = sorted(POSITIVE_KINDS) + ["view", "hide"]

    def feed() -> None:
        prod = producer(stack.bootstrap)
        posts = records(int(args.rate * args.minutes * 60) + 1, "soak")
        start = time.perf_counter()
        for i, post in enumerate(posts):
            if stop.is_set():
                break
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            post["ts"] = time.time()
            prod.send(settings.posts_topic, json.dumps(post).encode())
            target = posts[max(0, i - 500 + (i * 7919) % 500)]["post_id"]
            prod.send(settings.interactions_topic, json.dumps(
                {"event_id": f"s{i}", "user_id": f"v{i % 5000}", "post_id": target,
                 "kind": kinds[i % len(kinds)], "ts": time.time()}).encode())
        prod.flush()

    def api() -> None:
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 2:
                        resp = c.post(base + "/v1/suggest", json={"text": "garlic bread oven",
                                                                   "user_id": f"u{i % 2000}"})
                    else:
                        resp = c.get(f"{base}/v1/feed/v{i % 5000}")
                    errors["api"] += resp.status_code >= 500
                except httpx.HTTPError:
                    errors["api"] += 1
                time.sleep(1.0 / args.rps)

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=api,
                                                                            daemon=True)]
    for t in threads:
        t.start()
    samples = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(10)
            text = httpx.get(base + "/metrics", timeout=10).text
            samples.append({"t": round(time.monotonic() - start), "rss": rss_bytes(proc.pid),
                            "redis": int(r.info("memory")["used_memory"]), "lag": lag(text),
                            "posts": r.zcard("soak:recent")})
            print(samples[-1], flush=True)
    finally:
        stop.set()
        stop_daemon(proc)
        stack.stop()
    third = max(1, len(samples) // 3)

    def growth(key: str) -> float:
        first = np.mean([s[key] for s in samples[:third]])
        last = np.mean([s[key] for s in samples[-third:]])
        return round(float((last - first) / max(first, 1.0)), 3)

    report = {"machine": f"{platform.node()} {os.cpu_count()} cores", "minutes": args.minutes,
              "rate_posts_per_s": args.rate, "api_rps": args.rps, "api_5xx": errors["api"],
              "rss_growth": growth("rss"), "redis_growth": growth("redis"),
              "max_lag": max(s["lag"] for s in samples), "samples": samples}
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(samples, args.out / "soak.png")
    print({k: v for k, v in report.items() if k != "samples"})


def _plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(t, [s["rss"] / 2**20 for s in samples])
    axes[0].set_ylabel("daemon RSS (MiB)")
    axes[1].plot(t, [s["redis"] / 2**20 for s in samples])
    axes[1].set_ylabel("Redis used (MiB)")
    axes[2].plot(t, [s["lag"] for s in samples])
    axes[2].set_ylabel("consumer lag")
    axes[2].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
