#!/usr/bin/env python
"""Serving latency under open-loop load: p50/p99/max of suggest and feed against offered rate.

Everything runs on this machine, each part in its own process: the embedded stack of
bench_daemon.py (a Tansu broker and a Redis), one daemon (training on unless --no-train), a
background stream of posts, and the load generator. Two scenarios:

- real: the daemon loads a copy of a `tagspace train` model of howyoutagtweets (--model; its
  checkpoints never touch the original). `tagspace replay --synthesize-interactions` produces
  --replay-posts real posts to Kafka (train.csv, then valid.csv, then both again under new ids:
  54,000 by default, the issue's set-up, with about 23k synthesized interactions) and nothing is
  measured before the daemon has ingested all of it (every record consumed, consumer lag 0,
  feeds no longer cold start).
  Suggest requests carry valid.csv tweets and their real authors (personalized); feed requests
  (k=20) go to the users with positive interactions in Redis.
- synthetic: scale. A fresh model with --synthetic-tags hashtags, --synthetic-candidates posts
  stored with random embeddings (tweets' text, one synthetic tag each, so authors have histories),
  --synthetic-users users with 50 likes each.

During every measurement a child process produces --stream-rate posts/s (valid.csv, then train.csv,
new ids on each pass), so ingestion and online training compete with serving as in production.

The load generator (scripts/loadgen.py, whose docstring gives its design and why not wrk or hey):
open loop, Python asyncio over raw keep-alive HTTP/1.1, in its own process at nice -10 (when
allowed). Arrival times are drawn up front, Poisson by default (exponential gaps; --arrivals
uniform for a fixed step), each route at half the offered total, and a request leaves at its time
whether or not earlier ones have been answered. Latency runs from the *scheduled* time to the last
byte of the response, so a server (or generator) that falls behind shows as latency, not as fewer
requests (no coordinated omission). The send lag (scheduled -> written) is reported beside it to
tell generator trouble apart. A request not answered within --timeout of its scheduled time is an
error and enters the percentiles at the timeout (a lower bound). Requests of the first --warmup
seconds are sent but not counted. Python costs the generator CPU (about 200 us a request here,
most of it the kernel's socket calls), so its user+sys seconds per second of the measured window
(from /proc) are reported per point, beside the daemon's (its whole process tree), the broker's,
Redis's, the stream's and the rest of the machine's ("other": this machine is shared): the share
of the cores the harness took from the server is on the record.

Sweep: offered totals in ascending order; after the --target-rate point (the issue's 100 + 100
req/s: suggest p99 <= 15 ms, feed p99 <= 30 ms), the sweep stops at the first rate that misses
the budget (either p99 > --budget-ms, or any error) unless --full-sweep. `max_rate_within_budget`
is the highest rate with every rate up to it within budget.

Output: <out>/<name>.json and <out>/<name>.png (p50/p99 against offered rate, per route).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import numpy as np
from loadgen import ROUTES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

TARGETS_MS = {"suggest": 15.0, "feed": 30.0}  # issue 11, at --target-rate
HYT = ROOT.parent / "shared/data/howyoutagtweets"

EPILOG = """\
examples:
  # the full run (both scenarios, up to 6 rates, 20 s each + 5 s warm-up): 10 minutes at most
  .venv/bin/python scripts/bench_serving.py --name serving
  # a smoke run (20 + 20 and 40 + 40 req/s, 5 s per point, small data): about 90 s
  .venv/bin/python scripts/bench_serving.py --quick
  # the real scenario only, training off, a denser sweep, every rate even after a miss
  .venv/bin/python scripts/bench_serving.py --scenarios real --no-train \\
      --rates 100,200,300,400,500,600,800,1000 --full-sweep --name real-notrain
  # any daemon setting, as `tagspace daemon` names it
  .venv/bin/python scripts/bench_serving.py --set workers=1 --set feed_history=20
"""


# --- the background stream (a child process) --------------------------------------------------

def cycled_posts(files: list[Path]) -> Iterator[tuple[int, dict]]:
    """(pass, record) of the valid post records of ``files`` in turn, again and again."""
    from daemon.replay import post_values

    passes = 0
    while True:
        found = False
        for path in files:
            for _, record in post_values(Path(path)):
                if record is not None:
                    found = True
                    yield passes, record
        if not found:
            raise SystemExit(f"no posts in {files}")
        passes += 1


def child_stream(spec_path: str) -> None:
    """Produce posts at spec's rate until SIGTERM: its files in turn, new ids on every pass."""
    from bench_daemon import producer

    from daemon.replay import InterestModel

    spec = json.loads(Path(spec_path).read_text())
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    prod = producer(spec["bootstrap"])
    interest = InterestModel(spec["interactions"], 1) if spec["interactions"] > 0 else None
    rate, sent = spec["rate"], 0
    print("ready", flush=True)
    start = time.perf_counter()
    for passes, record in cycled_posts([Path(f) for f in spec["files"]]):
        if stop:
            break
        record["post_id"] = f"{spec['prefix']}{passes}-{record['post_id']}"
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        prod.send(spec["topic"], json.dumps(record).encode(), key=record["post_id"].encode())
        sent += 1
        for event in interest.events(record) if interest else []:
            prod.send(spec["interactions_topic"], json.dumps(event).encode(),
                      key=event["user_id"].encode())
    prod.flush()
    seconds = time.perf_counter() - start
    print(json.dumps({"posts": sent, "seconds": round(seconds, 1),
                      "posts_per_s": round(sent / seconds, 1)}), flush=True)


# --- CPU and metrics --------------------------------------------------------------------------

CLK = os.sysconf("SC_CLK_TCK")


SCHED_IDLE = 5


def process_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, user+sys CPU seconds, scheduling policy) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK,
                              int(fields[38]))
    return out


def cpu_snapshot(components: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each component's process tree, and of the whole machine."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)

    def tree(root: int) -> float:
        todo, total = [root], 0.0
        while todo:
            pid = todo.pop()
            total += table.get(pid, (0, 0.0, 0))[1]
            todo += children.get(pid, [])
        return total

    out = {name: tree(root) for name, root in components.items()}
    if "daemon" in components:  # its parts: its own process, the trainer (SCHED_IDLE), servers
        root = components["daemon"]
        parts = {"daemon:process": table.get(root, (0, 0.0, 0))[1], "daemon:trainer": 0.0,
                 "daemon:serving": 0.0}
        for child in children.get(root, []):
            part = "trainer" if table[child][2] == SCHED_IDLE else "serving"
            parts[f"daemon:{part}"] += tree(child)  # (the resource tracker: ~0, with serving)
        out.update(parts)
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    out["machine"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK  # all but idle and iowait
    return out


def cpu_per_s(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, float]:
    out = {k: round((b[k] - a[k]) / seconds, 3) for k in a}
    out["other"] = round(out["machine"] - sum(v for k, v in out.items()
                                              if k != "machine" and ":" not in k), 3)
    return out


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=60).text  # a saturated daemon queues it
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


# --- scenarios --------------------------------------------------------------------------------

@dataclass
class Target:
    """A daemon ready to measure, with the requests to send it."""

    name: str
    settings: Any  # daemon.config.Settings
    proc: subprocess.Popen
    bodies: list[str]  # suggest request bodies
    paths: list[str]  # feed request paths
    setup: dict  # what was loaded, for the report

    @property
    def base(self) -> str:
        return f"http://{self.settings.http_addr}"


def daemon_settings(stack: Any, name: str, model_dir: Path, args: Any, **kw: Any) -> Any:
    from dataclasses import fields

    from daemon.config import Settings

    types: dict[str, Any] = {f.name: type(f.default) for f in fields(Settings)}
    kw.setdefault("train", not args.no_train)
    for item in args.set:
        key, _, value = item.partition("=")
        key = key.replace("-", "_")
        if key not in types:
            raise SystemExit(f"--set {item}: no daemon setting {key!r}")
        t = types[key]
        kw[key] = value.lower() in ("1", "true", "yes", "on") if t is bool else t(value)
    return stack.settings(name, model_dir, **kw)


def suggest_bodies(path: Path, n: int, authors: list[str] | None = None) -> list[str]:
    """Request bodies from the tweets of ``path``: their text and author (or ``authors``)."""
    from tagspace.dataset import read_posts

    out = []
    for i, p in enumerate(read_posts(path, require_tokens=True)):
        if i >= n:
            break
        user = authors[i % len(authors)] if authors else p.user_id
        out.append(json.dumps({"text": " ".join(p.tokens), "k": 10, "user_id": user}))
    return out


def feed_paths(users: list[str], seed: int) -> list[str]:
    from urllib.parse import quote

    users = sorted(users)
    np.random.default_rng(seed).shuffle(users)
    return [f"/v1/feed/{quote(u, safe='')}?k=20" for u in users]


def wait_for_feeds(base: str, paths: list[str], timeout: float, full: int = 0) -> None:
    """Until a sample of feeds answers with items, not cold start (``full``: that many items),
    and the same items twice in a row a second apart (the candidate index has loaded)."""
    import httpx

    deadline, last = time.monotonic() + timeout, None
    while True:
        bodies = [httpx.get(base + p, timeout=10).json() for p in paths[:10]]
        ready = all(b["items"] and not b["cold_start"] and len(b["items"]) >= full
                    for b in bodies)
        items = [[i["post_id"] for i in b["items"]] for b in bodies]
        if ready and items == last:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"feeds still cold start, short or changing after {timeout:.0f} "
                               f"s: {bodies[0]}")
        last = items if ready else None
        time.sleep(1)


def write_replay_posts(out: Path, files: list[Path], n: int) -> None:
    """``n`` post records as JSONL: ``files`` in turn, again and again, ids suffixed from the
    second pass on (a replayed tweet is a new post, as in the background stream)."""
    with open(out, "w") as f:
        for _, (passes, record) in zip(range(n), cycled_posts(files), strict=False):
            if passes:
                record["post_id"] = f"{record['post_id']}~{passes}"
            f.write(json.dumps(record) + "\n")


def setup_real(stack: Any, work: Path, args: Any) -> Target:
    import redis
    from bench_daemon import TAGSPACE, start_daemon, stop_daemon

    if not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: no config.json. Train it first: tagspace train --data "
                         f"{HYT}/train.csv --valid {HYT}/valid.csv --dim 64 --out {args.model}")
    model_dir = work / "real-model"
    shutil.copytree(args.model, model_dir)  # the daemon writes its checkpoints there
    s = daemon_settings(stack, "real", model_dir, args)
    replay_file = work / "real-posts.jsonl"
    write_replay_posts(replay_file, [args.data / "train.csv", args.data / "valid.csv"],
                       args.replay_posts)
    replay = [str(TAGSPACE), "replay", "--quiet", "--data", str(replay_file),
              "--synthesize-interactions", str(args.synthesize_interactions),
              "--kafka-bootstrap", stack.bootstrap, "--posts-topic", s.posts_topic,
              "--interactions-topic", s.interactions_topic]
    started = time.monotonic()
    producing = subprocess.Popen(replay, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    proc = start_daemon(s, work / "real.log")
    try:  # a failed setup must not leave its daemon running (it would load later runs)
        out = producing.communicate()[0]
        if producing.returncode != 0:
            raise RuntimeError(f"replay failed: {out[-2000:]}")
        words = out.split()  # "sent N posts and M interactions to ..."
        posts = int(words[words.index("sent") + 1])
        interactions = int(words[words.index("and") + 1])
        base = f"http://{s.http_addr}"
        ingest = wait_ingested(base, s, posts, interactions, args)
        r = redis.Redis.from_url(stack.redis_url)
        users = [k.decode().split(":hist:", 1)[1]
                 for k in r.scan_iter(match=f"{s.redis_prefix}:hist:*", count=1000)]
        if not users:
            raise RuntimeError("no user has positive interactions: nothing to ask feeds for")
        paths = feed_paths(users, args.seed)
        wait_for_feeds(base, paths, 120)
        setup = {"model": str(args.model), "posts_replayed": posts,
                 "interactions_replayed": interactions, "users_with_history": len(users),
                 "ingest_seconds": round(time.monotonic() - started, 1), **ingest}
    except BaseException:
        stop_daemon(proc)
        raise
    return Target("real", s, proc, suggest_bodies(args.data / "valid.csv", 2000), paths, setup)


def wait_ingested(base: str, s: Any, posts: int, interactions: int, args: Any) -> dict:
    """Until every replayed record is consumed and the consumer lag is 0."""
    from tagspace.progress import is_terminal, progress_bar

    bar = progress_bar(posts + interactions, "ingesting", "record",
                       disable=args.quiet or not is_terminal())
    done, deadline = 0, time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            m = scrape(base)
            cp = metric(m, "tagspace_records_consumed_total", topic=s.posts_topic)
            ci = metric(m, "tagspace_records_consumed_total", topic=s.interactions_topic)
            lag = metric(m, "tagspace_consumer_lag")
            bar.update(int(cp + ci) - done)
            done = int(cp + ci)
            if cp >= posts and ci >= interactions and lag == 0:
                return {"posts_consumed": cp, "interactions_consumed": ci}
            time.sleep(1)
    finally:
        bar.close()
    raise TimeoutError(f"ingestion not done after 900 s ({done}/{posts + interactions})")


def setup_synthetic(stack: Any, work: Path, args: Any) -> Target:
    """A model with n_tags hashtags and n_candidates stored posts (moved from bench_daemon)."""
    import redis
    from bench_daemon import start_daemon

    from daemon.records import Interaction
    from daemon.store import Store
    from tagspace.checkpoint import Checkpoint, save_checkpoint
    from tagspace.dataset import Post, read_posts
    from tagspace.hogwild import TrainConfig
    from tagspace.model import ModelConfig
    from tagspace.online import Capacity, OnlineTagSpace

    n_tags, n_cand, n_users = args.synthetic_tags, args.synthetic_candidates, args.synthetic_users
    tweets = [p.tokens for p in read_posts(args.data / "train.csv", require_tokens=True)]
    model_dir = work / "synthetic-model"
    config = ModelConfig(encoder="conv", dim=64, hidden=1000, dropout=0.0, word_tag_share=True)
    online = OnlineTagSpace.fresh(config, Capacity(words=50_000, tags=n_tags, min_word_count=1,
                                                   min_tag_count=1), TrainConfig())
    for tokens in tweets:
        online.words.observe(tokens, 0.0)
    for i in range(0, n_tags, 1000):
        online.tags.observe([f"tag{j}" for j in range(i, min(i + 1000, n_tags))], 0.0)
    save_checkpoint(model_dir, Checkpoint(online.snapshot()))
    s = daemon_settings(stack, "synthetic", model_dir, args, recent_posts=n_cand,
                        tag_capacity=n_tags)
    store = Store(redis.Redis.from_url(stack.redis_url), s.redis_prefix, recent_posts=n_cand)
    rng = np.random.default_rng(args.seed)
    now = time.time()
    authors = [f"author{a}" for a in range(5000)]
    for i in range(0, n_cand, 5000):
        store.write([(Post(f"c{j}", authors[j % 5000], now - (n_cand - j) * 0.01,
                           tweets[j % len(tweets)], (f"tag{int(rng.integers(n_tags))}",)),
                      rng.standard_normal(64).astype(np.float32))
                     for j in range(i, min(i + 5000, n_cand))], 1, [])
    likes = [Interaction(f"l{u}-{k}", f"user{u}", f"c{int(rng.integers(n_cand))}", "like",
                         now - 50 + k) for u in range(n_users) for k in range(50)]
    for i in range(0, len(likes), 5000):
        store.write([], 1, likes[i:i + 5000])
    proc = start_daemon(s, work / "synthetic.log")
    paths = feed_paths([f"user{u}" for u in range(n_users)], args.seed)
    wait_for_feeds(f"http://{s.http_addr}", paths, 180, full=20)
    setup = {"tags": n_tags, "candidates": n_cand, "users": n_users, "likes_per_user": 50}
    return Target("synthetic", s, proc, suggest_bodies(args.data / "valid.csv", 2000, authors),
                  paths, setup)


# --- one rate point, a sweep ------------------------------------------------------------------

def run_point(target: Target, others: dict[str, int], total: float, args: Any, work: Path,
              seed: int) -> dict:
    from tagspace.progress import is_terminal, progress_bar

    host, port = target.settings.http_addr.rsplit(":", 1)
    spec_path, out_path = work / "gen.json", work / "gen.npz"
    t0 = time.monotonic() + 2.0  # the child's start-up and connections come before
    rates = {r: total / len(ROUTES) for r in ROUTES}
    gen = loadgen.start({
        "host": host, "port": int(port), "t0": t0, "warmup": args.warmup,
        "duration": args.seconds, "rates": rates, "arrivals": args.arrivals, "seed": seed,
        "timeout": args.timeout, "max_connections": args.max_connections,
        "preconnect": int(min(args.max_connections, 8 + total * 0.05)),
        "suggest_bodies": target.bodies, "feed_paths": target.paths,
        "token": target.settings.api_token}, spec_path, out_path)
    components = {"generator": gen.pid, **others}
    bar = progress_bar(int(args.warmup + args.seconds), f"{target.name} {total:g} req/s", "s",
                       disable=args.quiet or not is_terminal())
    shown = [0]

    def tick() -> None:
        done = int(time.monotonic() - t0)
        if done > shown[0]:
            bar.update(done - shown[0])
            shown[0] = done

    try:
        m0, m0_at = scrape(target.base), time.monotonic()
        _sleep_until(t0 + args.warmup, tick)
        cpu0 = cpu_snapshot(components)
        _sleep_until(t0 + args.warmup + args.seconds, tick)
        cpu1 = cpu_snapshot(components)
        m1, m1_at = scrape(target.base), time.monotonic()
        printed = gen.communicate(timeout=args.timeout + 120)[0]
    finally:
        bar.close()
        if gen.poll() is None:
            gen.kill()
    if gen.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {gen.returncode})")
    a, meta = loadgen.read_result(out_path, printed)
    if args.keep_requests:  # every request's schedule, latency and route, for tail studies
        shutil.copy(out_path, args.out / f"{args.name}-{target.name}-{total:g}.npz")
    out: dict[str, Any] = {"offered_rps": total,
                           "routes": loadgen.summarize_routes(a, args.warmup,
                                                              args.warmup + args.seconds)}
    for route in ROUTES:
        out["routes"][route]["offered_rps"] = rates[route]
    window = (a["times"] >= args.warmup) & (a["times"] < args.warmup + args.seconds)
    out["routes"]["feed"]["cold_start_answers"] = int((a["cold"] & window & (a["routes"] == 1))
                                                      .sum())
    cpu = cpu_per_s(cpu0, cpu1, args.seconds)
    out["cpu_cores"] = cpu
    out["generator"] = {**meta, "cpu_us_per_request": round(
        cpu["generator"] * args.seconds / max(int(window.sum()), 1) * 1e6, 1)}
    seconds = m1_at - m0_at
    s = target.settings
    out["daemon"] = {
        "stream_posts_consumed_per_s": round(
            (metric(m1, "tagspace_records_consumed_total", topic=s.posts_topic)
             - metric(m0, "tagspace_records_consumed_total", topic=s.posts_topic)) / seconds, 1),
        "consumer_lag_at_end": metric(m1, "tagspace_consumer_lag"),
        "training_examples_per_s": round(
            (metric(m1, "tagspace_training_examples_total")
             - metric(m0, "tagspace_training_examples_total")) / seconds, 1),
        "reembedded_per_s": round((metric(m1, "tagspace_reembedded_posts_total")
                                   - metric(m0, "tagspace_reembedded_posts_total")) / seconds, 1),
        "suggest_batch_mean": round(
            (metric(m1, "tagspace_suggest_batch_size_sum")
             - metric(m0, "tagspace_suggest_batch_size_sum"))
            / max(1.0, metric(m1, "tagspace_suggest_batch_size_count")
                  - metric(m0, "tagspace_suggest_batch_size_count")), 2),
        "model_version_at_start": metric(m0, "tagspace_model_version"),
        "model_version": metric(m1, "tagspace_model_version")}
    out["drain_seconds"] = 0.0
    if any(out["routes"][r]["errors"] for r in ROUTES):  # abandoned requests may still run
        answered = api_requests(m0) + int(np.isfinite(a["lag"]).sum())
        out["drain_seconds"] = drain(lambda: api_requests(scrape(target.base)), answered)
    return out


def _sleep_until(when: float, tick: Any) -> None:
    while (left := when - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        tick()


def api_requests(samples: dict) -> float:
    """Suggest and feed requests the daemon has finished (its own histogram's count)."""
    return sum(metric(samples, "tagspace_api_request_seconds_count", route=route)
               for route in ("/v1/suggest", "/v1/feed/{user_id}"))


def drain(count: Any, target: float, limit: float = 60.0, still_s: float = 2.0) -> float:
    """Seconds until ``count()`` (requests the daemon finished) reaches ``target``, or stops
    moving for ``still_s``: requests the generator gave up on would otherwise still load the
    next point."""
    start = since = time.monotonic()
    last = count()
    while last < target and time.monotonic() - start < limit:
        time.sleep(0.5)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            break
    return round(time.monotonic() - start, 1)


def passes(point: dict, budget: dict[str, float]) -> bool:
    return all(point["routes"][r]["errors"] == 0 and point["routes"][r]["p99_ms"] <= budget[r]
               for r in ROUTES)


def sweep(target: Target, stack: Any, work: Path, args: Any) -> dict:
    import dataclasses

    spec = work / "stream.json"
    spec.write_text(json.dumps({
        "bootstrap": stack.bootstrap, "topic": target.settings.posts_topic,
        "interactions_topic": target.settings.interactions_topic, "rate": args.stream_rate,
        "interactions": args.stream_interactions, "prefix": "bg",
        "files": [str(args.data / "valid.csv"), str(args.data / "train.csv")]}))
    stream = subprocess.Popen([sys.executable, __file__, "--child", "stream", str(spec)],
                              stdout=subprocess.PIPE, text=True)
    try:
        if stream.stdout is None or stream.stdout.readline().strip() != "ready":
            raise RuntimeError("the background stream did not start")
        time.sleep(3)  # the daemon's ingest of the stream settles
        others = {"daemon": target.proc.pid, "broker": stack.tansu.pid,
                  "redis": stack.redis.pid, "stream": stream.pid}
        points, budget = [], {r: args.budget_ms for r in ROUTES}
        for n, total in enumerate(args.rates):
            point = run_point(target, others, total, args, work, args.seed + n)
            point["within_budget"] = passes(point, budget)
            points.append(point)
            if not args.quiet:
                print(_line(target.name, point), flush=True)
            if not point["within_budget"] and total >= args.target_rate and not args.full_sweep:
                break
    finally:
        stream.send_signal(signal.SIGTERM)
        tail = stream.communicate(timeout=60)[0].strip().splitlines()
    at_target = next(p for p in points if p["offered_rps"] == args.target_rate)
    ok_rates = []
    for p in points:
        if not p["within_budget"]:
            break
        ok_rates.append(p["offered_rps"])
    settings = dataclasses.asdict(target.settings)
    if settings.get("api_token"):
        settings["api_token"] = "(set)"
    return {"setup": target.setup, "daemon_settings": settings,
            "background_stream": json.loads(tail[-1]) if tail else None,
            "target": {"offered_rps": args.target_rate, "p99_ms_required": TARGETS_MS,
                       "met": passes(at_target, TARGETS_MS),
                       **{r: {k: at_target["routes"][r][k] for k in
                              ("p50_ms", "p99_ms", "max_ms", "errors")} for r in ROUTES}},
            "max_rate_within_budget": max(ok_rates, default=None),
            "points": points}


def _line(name: str, p: dict) -> str:
    r = p["routes"]
    cpu = p["cpu_cores"]
    return (f"{name:9s} {p['offered_rps']:6g} req/s | suggest p50 {r['suggest']['p50_ms']:8.1f} "
            f"p99 {r['suggest']['p99_ms']:8.1f} max {r['suggest']['max_ms']:8.1f} ms, "
            f"{r['suggest']['errors']} errors | feed p50 {r['feed']['p50_ms']:8.1f} "
            f"p99 {r['feed']['p99_ms']:8.1f} max {r['feed']['max_ms']:8.1f} ms, "
            f"{r['feed']['errors']} errors | cores: generator {cpu['generator']:.2f}, daemon "
            f"{cpu['daemon']:.2f} (serving {cpu.get('daemon:serving', 0):.2f}, trainer "
            f"{cpu.get('daemon:trainer', 0):.2f}), other {cpu['other']:.2f}"
            + ("" if p["within_budget"] else " | over budget"))


# --- output -----------------------------------------------------------------------------------

def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    budget, target_rate = report["settings"]["budget_ms"], report["settings"]["target_rate"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, route in zip(axes, ROUTES, strict=True):
        marked = False
        for (name, sc), color in zip(report["scenarios"].items(), ("C0", "C1"), strict=False):
            x = [p["offered_rps"] for p in sc["points"]]
            for q, style, face in (("p99", "-o", color), ("p50", "--s", "white")):
                ax.plot(x, [max(p["routes"][route][f"{q}_ms"], 0.1) for p in sc["points"]],
                        style, color=color, mfc=face, label=f"{name} {q}", ms=5)
            bad = [p for p in sc["points"] if p["routes"][route]["errors"]]
            if bad:
                ax.plot([p["offered_rps"] for p in bad],
                        [p["routes"][route]["p99_ms"] for p in bad], "x", color="red", ms=9,
                        label=None if marked else "with errors")
                marked = True
        ax.axhline(budget, color="red", ls=":", lw=1, label=f"sweep budget {budget:g} ms")
        ax.axhline(TARGETS_MS[route], color="green", ls=":", lw=1,
                   label=f"target {TARGETS_MS[route]:g} ms at {target_rate:g} req/s")
        ax.axvline(target_rate, color="grey", lw=0.5)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("offered total rate, req/s (half suggest, half feed)")
        ax.set_title({"suggest": "POST /v1/suggest", "feed": "GET /v1/feed/{user}?k=20"}[route])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("latency from scheduled send, ms")
    st = report["settings"]
    fig.suptitle(f"open loop ({st['arrivals']}), {st['seconds']:g} s per point, training "
                 f"{'off' if st['no_train'] else 'on'}, stream {st['stream_rate']:g} posts/s; "
                 f"{report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    return f"{platform.node()}, {os.cpu_count()} cores, {model}"


def git_revision() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    return git("rev-parse", "--short", "HEAD").strip() + (" (dirty)" if git("status",
                                                          "--porcelain", "daemon", "tagspace")
                                                          else "")


QUICK = {"rates": "40,80", "target_rate": 40.0, "full_sweep": True, "seconds": 5.0, "warmup": 2.0,
         "replay_posts": 3000, "synthesize_interactions": 1.0, "synthetic_tags": 10_000,
         "synthetic_candidates": 10_000, "synthetic_users": 200,
         "out": Path("runs/bench_serving"), "name": "quick"}
FULL = {"rates": "100,200,300,400,600,800", "target_rate": 200.0, "seconds": 20.0,
        "warmup": 5.0, "replay_posts": 54_000, "synthesize_interactions": 0.6,
        "synthetic_tags": 100_000, "synthetic_candidates": 100_000, "synthetic_users": 1000,
        "out": Path("docs/results/serving"), "name": "serving", "full_sweep": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("runs/hyt64"),
                   help="a `tagspace train` output of howyoutagtweets (default: runs/hyt64)")
    p.add_argument("--data", type=Path, default=HYT,
                   help="folder with howyoutagtweets' train.csv and valid.csv")
    p.add_argument("--scenarios", default="real,synthetic", help="real, synthetic or both")
    g = p.add_argument_group("load (defaults: full run / --quick)")
    g.add_argument("--rates", help="offered total rates, req/s, split evenly between the routes "
                   "(100,200,300,400,600,800 / 40,80)")
    g.add_argument("--target-rate", type=float,
                   help="the rate of the issue's targets (200, i.e. 100 + 100 / 40)")
    g.add_argument("--seconds", type=float, help="measured seconds per rate (20 / 5)")
    g.add_argument("--warmup", type=float, help="seconds sent first, not counted (5 / 2)")
    g.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    g.add_argument("--timeout", type=float, default=10.0,
                   help="seconds from a request's scheduled time before it is an error")
    g.add_argument("--max-connections", type=int, default=1024)
    g.add_argument("--budget-ms", type=float, default=50.0, help="p99 budget of the sweep")
    g.add_argument("--full-sweep", action="store_true", default=None,
                   help="every rate, even after one misses the budget (--quick: always)")
    g = p.add_argument_group("data and daemon")
    g.add_argument("--replay-posts", type=int,
                   help="real posts replayed before measuring: train.csv, valid.csv, then both "
                   "again under new ids (54000, the issue's set-up / 3000)")
    g.add_argument("--synthesize-interactions", type=float,
                   help="synthesized interactions per replayed post (0.6: 23,312 at 54k "
                   "posts / 1.0)")
    g.add_argument("--stream-rate", type=float, default=100.0,
                   help="background posts/s while measuring")
    g.add_argument("--stream-interactions", type=float, default=0.0,
                   help="synthesized interactions per background post")
    g.add_argument("--synthetic-tags", type=int, help="(100000 / 10000)")
    g.add_argument("--synthetic-candidates", type=int, help="(100000 / 10000)")
    g.add_argument("--synthetic-users", type=int, help="users with 50 likes each (1000 / 200)")
    g.add_argument("--no-train", action="store_true", help="the daemon with training off")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any daemon setting (repeatable), e.g. workers=1")
    g = p.add_argument_group("output")
    g.add_argument("--quick", action="store_true", help="a short smoke run (under runs/)")
    g.add_argument("--out", type=Path, help="folder of the JSON and PNG "
                   "(docs/results/serving / runs/bench_serving)")
    g.add_argument("--name", help="file name stem (serving / quick)")
    g.add_argument("--keep-requests", action="store_true",
                   help="also write each point's per-request arrays (scheduled time, latency, "
                   "route, status) as <name>-<scenario>-<rate>.npz")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress, no line per rate")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.rates = sorted({float(r) for r in args.rates.split(",")} | {args.target_rate})
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(args.scenarios) - {"real", "synthetic"} or not args.scenarios:
        p.error(f"--scenarios: real and/or synthetic, not {args.scenarios}")
    return args


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # the stream process this script starts
        child_stream(sys.argv[3])
        return
    args = parse_args()
    from bench_daemon import Stack, scratch, stop_daemon

    args.out.mkdir(parents=True, exist_ok=True)
    work = scratch("serving")
    report: dict[str, Any] = {
        "name": args.name, "machine": machine(), "python": platform.python_version(),
        "revision": git_revision(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "generator": "python asyncio, raw keep-alive HTTP/1.1, open loop, in its own process",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "scenarios": {}}
    stack = Stack(work)
    try:
        for name in args.scenarios:
            target = (setup_real if name == "real" else setup_synthetic)(stack, work, args)
            try:
                report["scenarios"][name] = sweep(target, stack, work, args)
            finally:
                stop_daemon(target.proc)
    except BaseException:
        print(f"failed; logs and data kept in {work}", file=sys.stderr)
        raise
    finally:
        stack.stop()
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, path.with_suffix(".png"))
    shutil.rmtree(work, ignore_errors=True)
    for name, sc in report["scenarios"].items():
        t = sc["target"]
        print(f"{name}: at {t['offered_rps']:g} req/s suggest p99 {t['suggest']['p99_ms']} ms, "
              f"feed p99 {t['feed']['p99_ms']} ms (target {'met' if t['met'] else 'missed'}); "
              f"highest rate within {args.budget_ms:g} ms: {sc['max_rate_within_budget']}")
    print(f"written {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
