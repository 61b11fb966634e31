#!/usr/bin/env python
"""Freshness and sustained ingest of the daemon on real tweets, everything on this machine.

The embedded stack of bench_daemon.py (a Tansu broker and a Redis), one daemon with a copy of a
`tagspace train` model of howyoutagtweets (--model; training on unless --no-train), and:

- freshness, per --rates: a producer in a process of its own sends raw tweets (valid.csv, then
  train.csv; new ids) on schedule at the rate for --seconds; every post is timed from its Kafka
  send to its embedding in Redis (the arrivals stream, read with XREAD), which is the moment
  `GET /v1/posts/{id}` can answer it (that route reads Redis; a sample of --api-checks ids is
  fetched through the API as well, and must all answer 200). p50 / p99 / max per rate, the
  producer's achieved rate, and the training side from /metrics: examples trained per second,
  the fraction of tagged posts trained on, and what was skipped by reason.
- sustained ingest (--sustained N): N tweets waiting in Kafka before the daemon starts; posts
  stored per second between the 10th and 90th percentile of arrivals, with training on and off.
- first sight (--first-sight N): N real tweets, each with a hashtag never seen before, sent one
  at a time; each timed until `/v1/suggest` for its text plus a word has that hashtag in its
  top 10.

Output: <out>/<name>.json and <out>/<name>.png (latency against send time, per rate).

examples:
  .venv/bin/python scripts/bench_freshness.py --name freshness      # 1,000 and 3,000 posts/s
  .venv/bin/python scripts/bench_freshness.py --rates 1000 --seconds 10 --sustained 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_daemon import (  # noqa: E402
    ArrivalWatcher,
    Stack,
    pct,
    producer,
    scratch,
    start_daemon,
    steady_rate,
    stop_daemon,
)
from bench_serving import git_revision, machine, metric, scrape  # noqa: E402

HYT = ROOT.parent / "shared/data/howyoutagtweets"
SERIES_EVERY = 20  # posts per timing kept in the JSON (the plot has them all)


def tweets(n: int, prefix: str) -> list[dict]:
    """``n`` raw tweets as contract records (valid.csv, then train.csv, again with new ids)."""
    from daemon.replay import post_values

    out: list[dict] = []
    rounds = 0
    while len(out) < n:
        for path in (HYT / "valid.csv", HYT / "train.csv"):
            for _, record in post_values(path):
                if record is None:
                    continue
                record["post_id"] = f"{prefix}{rounds}-{record['post_id']}"
                out.append(record)
                if len(out) == n:
                    return out
        rounds += 1
    return out


def child_produce(spec_path: str) -> None:
    """The producer process: records encoded up front, then sent on schedule after "go"."""
    spec = json.loads(Path(spec_path).read_text())
    records = tweets(spec["count"], spec["prefix"])
    values = [(r["post_id"], json.dumps(r).encode()) for r in records]
    prod = producer(spec["bootstrap"])
    print("ready", flush=True)
    sys.stdin.readline()
    rate, sent = spec["rate"], np.zeros(len(values))
    start = time.perf_counter()
    for i, (post_id, value) in enumerate(values):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[i] = time.time()
        prod.send(spec["topic"], value, key=post_id.encode())
    prod.flush()
    seconds = time.perf_counter() - start
    Path(spec["out"]).write_text(json.dumps({
        "ids": [v[0] for v in values], "sent": sent.tolist(),
        "tagged": sum(1 for r in records if r.get("tags")),
        "posts_per_s": round(len(values) / seconds, 1)}))


def copy_model(model: Path, work: Path, name: str) -> Path:
    target = work / name
    if model.is_dir():
        shutil.copytree(model, target)  # its checkpoints never touch the original
    return target


def training_side(before: dict, after: dict, seconds: float, tagged: int) -> dict:
    examples = metric(after, "tagspace_training_examples_total") - \
        metric(before, "tagspace_training_examples_total")
    skipped = {}
    for (name, labels), value in after.items():
        if name == "tagspace_training_posts_skipped_total":
            reason = dict(labels).get("reason", "")
            skipped[reason] = value - before.get((name, labels), 0.0)
    return {"examples_per_s": round(examples / seconds, 1),
            "fraction_of_tagged_trained": round(examples / tagged, 3) if tagged else None,
            "skipped_by_reason": {k: v for k, v in skipped.items() if v}}


def freshness_point(stack: Stack, work: Path, rate: int, args: Any) -> dict:
    name = f"fresh{rate}{'' if args.train else 'notrain'}"
    s = stack.settings(name, copy_model(args.model, work, name), train=args.train)
    proc = start_daemon(s, work / f"{name}.log")
    base = f"http://{s.http_addr}"
    try:
        spec_path, out_path = work / f"{name}.spec.json", work / f"{name}.sent.json"
        spec_path.write_text(json.dumps({
            "bootstrap": stack.bootstrap, "topic": s.posts_topic, "rate": rate,
            "count": int(rate * args.seconds), "prefix": f"{name}-", "out": str(out_path)}))
        child = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the producer did not start")
        watcher = ArrivalWatcher(stack.redis_url, s.redis_prefix)
        watcher.start()
        before = scrape(base)
        started = time.monotonic()
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(args.seconds * 4 + 60)
        sent = json.loads(out_path.read_text())
        deadline = time.monotonic() + 60
        while len(watcher.seen) < len(sent["ids"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        watcher.stop.set()
        after = scrape(base)
        seen = watcher.seen
        lat = [seen[i] - t for i, t in zip(sent["ids"], sent["sent"], strict=True) if i in seen]
        sample = sent["ids"][:: max(1, len(sent["ids"]) // args.api_checks)][: args.api_checks]
        with httpx.Client(timeout=5) as c:
            api_ok = sum(c.get(f"{base}/v1/posts/{i}").status_code == 200 for i in sample)
        point = {
            "offered_posts_per_s": rate, "producer_posts_per_s": sent["posts_per_s"],
            "posts": len(sent["ids"]), "stored": len(lat), "p50_s": pct(lat, 50),
            "p99_s": pct(lat, 99), "max_s": pct(lat, 100),
            "api_checked": len(sample), "api_visible": api_ok,
            "training": training_side(before, after, elapsed, sent["tagged"]),
            "series": {"sent": [round(t - sent["sent"][0], 3) for i, t in
                                zip(sent["ids"], sent["sent"], strict=True) if i in seen],
                       "latency_s": [round(x, 4) for x in lat]}}
        print(f"freshness at {rate} posts/s (training {'on' if args.train else 'off'}): "
              f"producer {point['producer_posts_per_s']}/s, p50 {point['p50_s']} s, "
              f"p99 {point['p99_s']} s, max {point['max_s']} s, stored "
              f"{point['stored']}/{point['posts']}, via API {api_ok}/{len(sample)}, "
              f"training {point['training']}", flush=True)
        return point
    finally:
        stop_daemon(proc)


def first_sight(stack: Stack, work: Path, n: int, args: Any) -> dict:
    """A hashtag used once: ``n`` real tweets each get a hashtag never seen before, sent one at
    a time; each is timed from its send until `/v1/suggest` for the same text plus a word has
    the new hashtag in its top 10 (polled every 20 ms, at most 10 s)."""
    name = "firstsight"
    s = stack.settings(name, copy_model(args.model, work, name), train=args.train)
    proc = start_daemon(s, work / f"{name}.log")
    base = f"http://{s.http_addr}"
    prod = producer(stack.bootstrap)
    latencies, missed = [], 0
    try:
        with httpx.Client(timeout=5) as client:
            for k, record in enumerate(tweets(n, "first-")):
                tag = f"neverseen{k}x{int(time.time())}"
                record = dict(record, tags=[tag])
                sent = time.monotonic()
                prod.send(s.posts_topic, json.dumps(record).encode(),
                          key=record["post_id"].encode())
                prod.flush()
                query = {"text": record["text"] + " now", "k": 10}
                while time.monotonic() - sent < 10.0:
                    body = client.post(f"{base}/v1/suggest", json=query).json()
                    if tag in [t["tag"] for t in body["tags"]]:
                        latencies.append(time.monotonic() - sent)
                        break
                    time.sleep(0.02)
                else:
                    missed += 1
    finally:
        prod.close()
        stop_daemon(proc)
    point = {"posts": n, "suggested": len(latencies), "missed_within_10_s": missed,
             "p50_s": pct(latencies, 50), "max_s": pct(latencies, 100)}
    print(f"first sight: {len(latencies)}/{n} new hashtags in the top 10 for their own text, "
          f"p50 {point['p50_s']} s, max {point['max_s']} s", flush=True)
    return point


def sustained(stack: Stack, work: Path, n: int, train: bool, args: Any) -> dict:
    name = f"sustained{'train' if train else 'notrain'}"
    s = stack.settings(name, copy_model(args.model, work, name), train=train)
    prod = producer(stack.bootstrap)
    records = tweets(n, f"{name}-")
    for rec in records:
        prod.send(s.posts_topic, json.dumps(rec).encode(), key=rec["post_id"].encode())
    prod.flush()
    watcher = ArrivalWatcher(stack.redis_url, s.redis_prefix)
    watcher.start()
    proc = start_daemon(s, work / f"{name}.log")
    try:
        deadline = time.monotonic() + 900
        while len(watcher.seen) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        watcher.stop.set()
        times = sorted(watcher.seen.values())
        metrics = scrape(f"http://{s.http_addr}")
        tagged = sum(1 for r in records if r.get("tags"))
        examples = metric(metrics, "tagspace_training_examples_total")
        out = {"posts": n, "stored": len(times),
               "posts_per_s": round(rate, 1) if (rate := steady_rate(times)) else None,
               "training_examples": examples,
               "fraction_of_tagged_trained": round(examples / tagged, 3) if tagged else None}
        print(f"sustained ingest, training {'on' if train else 'off'}: {out}", flush=True)
        return out
    finally:
        stop_daemon(proc)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for rate, point in report["freshness"].items():
        series = point["series"]
        ax.plot(series["sent"], series["latency_s"], ".", markersize=1.5,
                label=f"{rate} posts/s (p99 {point['p99_s']} s)")
    ax.set_xlabel("send time (s from the first post)")
    ax.set_ylabel("Kafka send -> visible (s)")
    ax.set_yscale("log")
    ax.set_title(f"freshness, training {'on' if report['train'] else 'off'} ({report['machine']})",
                 fontsize=9)
    ax.legend(markerscale=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_produce(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split(
        "examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("runs/hyt64"),
                   help="a `tagspace train` output (copied); absent: a fresh model")
    p.add_argument("--rates", default="1000,3000", help="offered posts/s, one point each")
    p.add_argument("--seconds", type=float, default=20.0, help="production time per rate")
    p.add_argument("--sustained", type=int, default=60_000,
                   help="posts waiting in Kafka for the sustained-ingest runs (0: none)")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="freshness with online training off")
    p.add_argument("--api-checks", type=int, default=200)
    p.add_argument("--first-sight", type=int, default=20,
                   help="hashtags used once, each timed until suggested (0: none)")
    p.add_argument("--out", type=Path, default=Path("docs/results/freshness"))
    p.add_argument("--name", default="freshness")
    args = p.parse_args()
    work = scratch("freshness")
    stack = Stack(work)
    report: dict[str, Any] = {"machine": machine(), "revision": git_revision(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "model": str(args.model), "train": args.train,
                              "seconds": args.seconds, "freshness": {}, "sustained": {}}
    try:
        for rate in [int(r) for r in args.rates.split(",") if r]:
            report["freshness"][str(rate)] = freshness_point(stack, work, rate, args)
        if args.first_sight:
            report["first_sight"] = first_sight(stack, work, args.first_sight, args)
        if args.sustained:
            for train in (True, False):
                report["sustained"]["on" if train else "off"] = sustained(
                    stack, work, args.sustained, train, args)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(report, args.out / f"{args.name}.png")
    for point in report["freshness"].values():  # the JSON keeps every 20th post's timing
        point["series"] = {k: v[::SERIES_EVERY] for k, v in point["series"].items()}
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    print(f"written {args.out / args.name}.json and .png")


if __name__ == "__main__":
    main()
