#!/usr/bin/env python
"""Served personalized quality vs the library's: does the daemon answer what `evaluate` measures?

1. A `tagspace train --valid` model (given with --model, or trained here at --dim).
2. Offline: `tagspace evaluate --model M --data VALID --personalize TRAIN` (the contract command).
3. Online: the daemon on real servers (embedded Tansu + Redis, the daemon its own process, online
   training off so both sides use the same weights), TRAIN replayed through Kafka so every author's
   history is in Redis, then `POST /v1/suggest {text, user_id, k: 10}` for every VALID post.
   P@1 and R@10 of the answers with the contract's definitions (a gold tag the model does not
   know is a miss).
Reports both, their ratio (target >= 0.98 on both) and how often the served top 1 and top 10
equal the library's, post by post.

Usage: python scripts/bench_personalized.py --train train.csv --valid valid.csv --out runs/bp
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_daemon import TAGSPACE, Stack, producer, scratch, start_daemon, stop_daemon  # noqa: E402

from daemon.replay import post_values  # noqa: E402
from daemon.store import Store  # noqa: E402
from tagspace.dataset import read_posts  # noqa: E402


def offline(model: Path, train: Path, valid: Path, out: Path) -> dict:
    subprocess.run([str(TAGSPACE), "evaluate", "--quiet", "--model", str(model), "--data",
                    str(valid), "--personalize", str(train), "--json", str(out)], check=True)
    return json.loads(out.read_text())


def served(base: str, valid: Path, workers: int) -> tuple[dict, list[list[str]]]:
    posts = [p for p in read_posts(valid, require_tags=True) if p.tags]
    client = httpx.Client(timeout=30)

    def ask(post):  # type: ignore[no-untyped-def]
        body = {"text": " ".join(post.tokens), "k": 10}
        if post.user_id:
            body["user_id"] = post.user_id
        r = client.post(base + "/v1/suggest", json=body)
        r.raise_for_status()
        return [t["tag"] for t in r.json()["tags"]]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(ask, posts))
    seconds = time.perf_counter() - start
    hits = sum(bool(a) and a[0] in p.tags for p, a in zip(posts, answers, strict=True))
    found = sum(len(set(a) & set(p.tags)) for p, a in zip(posts, answers, strict=True))
    gold = sum(len(p.tags) for p in posts)
    return ({"p_at_1": hits / len(posts), "r_at_10": found / gold, "n_posts": len(posts),
             "requests_per_s": round(len(posts) / seconds, 1)}, answers)


def agreement(model: Path, train: Path, valid: Path, answers: list[list[str]]) -> dict:
    """How often the served top 1 and top 10 equal the library's, post by post."""
    from tagspace.checkpoint import load_checkpoint
    from tagspace.personalize import (
        DEFAULT_WEIGHTS,
        AuthorProfiles,
        PersonalizedScorer,
        load_personalization,
    )
    from tagspace.tagger import top_k

    checkpoint = load_checkpoint(model)
    weights, bow = load_personalization(model, checkpoint.extra, DEFAULT_WEIGHTS)
    profiles = AuthorProfiles.from_posts(read_posts(train, require_tags=True))
    scorer = PersonalizedScorer(checkpoint.tagger, profiles, weights, bow)
    posts = [p for p in read_posts(valid, require_tags=True) if p.tags]
    same1 = same10 = 0
    for start in range(0, len(posts), 512):
        chunk = posts[start : start + 512]
        for row, served_top in zip(scorer.scores(chunk), answers[start : start + 512],
                                   strict=True):
            library = [s.tag for s in top_k(row, checkpoint.tagger.tags, 10)]
            same1 += library[:1] == served_top[:1]
            same10 += library == served_top
    return {"same_top_1": same1 / len(posts), "same_top_10": same10 / len(posts)}


def replay_train(stack: Stack, topic: str, train: Path) -> int:
    prod = producer(stack.bootstrap)
    ids = set()
    for value, record in post_values(train):
        prod.send(topic, value)
        if record is not None:
            ids.add(record["post_id"])
    prod.flush()
    return len(ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--valid", type=Path, required=True)
    p.add_argument("--model", type=Path, help="a `tagspace train --valid` model (default: "
                   "train one at --dim)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="concurrent API clients")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = scratch("personalized")
    model = args.model
    if model is None:
        model = args.out / f"model-d{args.dim}"
        if not (model / "config.json").is_file():
            subprocess.run([str(TAGSPACE), "train", "--quiet", "--data", str(args.train),
                            "--valid", str(args.valid), "--model", "tagspace", "--dim",
                            str(args.dim), "--out", str(model)], check=True)
    offline_metrics = offline(model, args.train, args.valid, work / "offline.json")
    print(f"offline (evaluate --personalize): {offline_metrics}", flush=True)

    daemon_model = work / "model"
    shutil.copytree(model, daemon_model)  # the daemon writes its checkpoints beside it
    stack = Stack(work)
    try:
        s = stack.settings("personalized", daemon_model, train=False,
                           checkpoint_interval_s=3600.0)
        n = replay_train(stack, s.posts_topic, args.train)
        proc = start_daemon(s, work / "daemon.log")
        store = Store(__import__("redis").Redis.from_url(stack.redis_url), s.redis_prefix)
        deadline = time.monotonic() + 900
        while store.count_posts() < n and time.monotonic() < deadline:
            time.sleep(1.0)
        stored = store.count_posts()
        time.sleep(2.0)  # the last pipeline's effects
        online_metrics, answers = served(f"http://{s.http_addr}", args.valid, args.workers)
        stop_daemon(proc)
    finally:
        stack.stop()
    print(f"served (POST /v1/suggest with user_id): {online_metrics}", flush=True)
    same = agreement(model, args.train, args.valid, answers)
    print(f"agreement with the library, post by post: {same}", flush=True)
    ratio = {k: online_metrics[k] / offline_metrics[k] for k in ("p_at_1", "r_at_10")}
    report = {"machine": platform.node(), "cpus": __import__("os").cpu_count(),
              "model": str(model), "train_posts_stored": stored, "offline": offline_metrics,
              "served": online_metrics, "ratio": ratio, "agreement": same}
    (args.out / "personalized.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"served / offline: P@1 {ratio['p_at_1']:.4f}, R@10 {ratio['r_at_10']:.4f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
