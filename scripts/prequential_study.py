#!/usr/bin/env python
"""Choose the daemon's online settings by prequential evaluation (test, then train).

Each row changes one setting of the daemon's defaults and replays the same time-ordered posts
through a fresh online model (``tagspace.prequential``), one worker, seeded. Reported: P@1/R@10
over the whole replay and over its second half (the settled quality), and posts/s. Writes
study.md, study.json and study.png (the curves) into --out.

Usage: python scripts/prequential_study.py --data train.csv --data valid.csv --out runs/pq-hyt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tagspace.dataset import read_posts
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace
from tagspace.plot import plot_prequential
from tagspace.prequential import prequential

# The baseline (the daemon's defaults when the study was run) and one change per row; the
# study moved min_word_count to 1 (docs/MODEL.md).
BASE = {"lr": 0.02, "negatives": 500, "min_tag_count": 2, "min_word_count": 2,
        "tag_capacity": 100_000, "word_capacity": 200_000, "batch_size": 16}
ROWS = [
    ("baseline", {}),
    ("lr 0.01", {"lr": 0.01}),
    ("lr 0.05", {"lr": 0.05}),
    ("lr 0.1", {"lr": 0.1}),
    ("100 negatives", {"negatives": 100}),
    ("1000 negatives", {"negatives": 1000}),
    ("tags admitted at 1st use", {"min_tag_count": 1}),
    ("tags admitted at 3rd use", {"min_tag_count": 3}),
    ("words admitted at 1st use", {"min_word_count": 1}),
    ("tag capacity 2,000 (LRU eviction)", {"tag_capacity": 2000}),
]


def run(posts, settings: dict, dim: int, seed: int, window: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    capacity = Capacity(settings["word_capacity"], settings["tag_capacity"],
                        settings["min_word_count"], settings["min_tag_count"])
    train = TrainConfig(lr=settings["lr"], batch_size=settings["batch_size"],
                        negatives=settings["negatives"], positives="all", seed=seed)
    config = ModelConfig(encoder="conv", dim=dim, hidden=1000, dropout=0.0, word_tag_share=True)
    online = OnlineTagSpace.fresh(config, capacity, train, seed=seed)
    start = time.perf_counter()
    report = prequential(online, posts, settings["batch_size"], window)
    return report, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--rows", help="comma-separated row numbers to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)  # one Hogwild worker's share, as in the daemon
    posts = [post for path in args.data for post in read_posts(path, require_tags=False)]
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [int(i) for i in args.rows.split(",")] if args.rows else range(len(ROWS))
    results, curves = [], []
    for i in chosen:
        label, change = ROWS[i]
        report, seconds = run(posts, BASE | change, args.dim, args.seed, args.window)
        tail_p1, tail_r10 = report.tail()
        row = {"row": label, "settings": BASE | change, "p_at_1": report.p_at_1,
               "r_at_10": report.r_at_10, "tail_p_at_1": tail_p1, "tail_r_at_10": tail_r10,
               "posts_per_s": len(posts) / seconds,
               "curve": report.to_dict()["curve"]}
        results.append(row)
        curves.append((label, report))
        print(f"{label:<36} P@1 {report.p_at_1:.4f} R@10 {report.r_at_10:.4f}  second half "
              f"P@1 {tail_p1:.4f} R@10 {tail_r10:.4f}  {len(posts) / seconds:.0f} posts/s",
              file=sys.stderr, flush=True)
        (args.out / "study.json").write_text(json.dumps(
            {"data": [str(d) for d in args.data], "posts": len(posts), "dim": args.dim,
             "seed": args.seed, "rows": results}, indent=2) + "\n")
    lines = [f"Prequential study: {len(posts)} posts from {', '.join(d.name for d in args.data)}"
             f", fresh model d={args.dim}, one worker, seed {args.seed}.", "",
             "| setting | P@1 | R@10 | P@1, 2nd half | R@10, 2nd half | posts/s |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['row']} | {r['p_at_1']:.4f} | {r['r_at_10']:.4f} | {r['tail_p_at_1']:.4f} "
              f"| {r['tail_r_at_10']:.4f} | {r['posts_per_s']:.0f} |" for r in results]
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    plot_prequential(curves, args.out / "study.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
