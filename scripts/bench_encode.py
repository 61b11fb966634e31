#!/usr/bin/env python
"""Post encoding throughput, as ingestion embeds posts: batches in arrival order, batches
grouped by length, and bfloat16 autocast; plus how close bf16 embeddings are to fp32.

One torch thread (as the daemon's ingest loop), real tweets (howyoutagtweets valid.csv, then
train.csv), a `tagspace train` model. Reports posts/s per way (best of --repeats), the largest
fp32 difference of length-grouped batches to arrival order, and the cosine of bf16 embeddings to
fp32 (min and mean; the bar is >= 0.999) and how many of each post's 20 nearest posts they
keep (recall@20 against fp32: the feed's max-cosine ranking, one history post).
Output: <out>/<name>.json.

examples:
  .venv/bin/python scripts/bench_encode.py --model runs/hyt64
  .venv/bin/python scripts/bench_encode.py --model runs/hyt64 --posts 5000 --group-sizes 32,64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_serving import git_revision, machine  # noqa: E402

from tagspace.checkpoint import load_checkpoint  # noqa: E402
from tagspace.dataset import read_posts  # noqa: E402
from tagspace.tagger import Tagger  # noqa: E402

HYT = ROOT.parent / "shared/data/howyoutagtweets"
ARRIVAL_BATCH = 500  # the daemon's max_poll_records: one poll's posts, in arrival order


def tweets(n: int) -> list[Sequence[str]]:
    out: list[Sequence[str]] = []
    for path in (HYT / "valid.csv", HYT / "train.csv"):
        for post in read_posts(path):
            out.append(post.tokens)
            if len(out) == n:
                return out
    return out


def arrival_order(tagger: Tagger, tokens: Sequence[Sequence[str]]) -> np.ndarray:
    """The way ingestion embedded before length groups: each poll's posts as one batch."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(tokens), ARRIVAL_BATCH):
            ids, mask = tagger._batch(tokens[i : i + ARRIVAL_BATCH])
            parts.append(tagger.model.embed_posts(ids, mask).numpy())
    return np.concatenate(parts)


def best_of(repeats: int, fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-12)


def neighbour_recall(exact: np.ndarray, approx: np.ndarray, k: int) -> float:
    """How many of each post's k nearest posts by cosine (a feed's max-cosine ranking, one
    history post) the bf16 embeddings keep: recall@k against fp32."""
    def nearest(e: np.ndarray) -> np.ndarray:
        unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]
    a, b = nearest(exact), nearest(approx)
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b, strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split(
        "examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("runs/hyt64"),
                   help="a `tagspace train` output")
    p.add_argument("--posts", type=int, default=4000)
    p.add_argument("--group-sizes", default="32,64,128", help="posts per length-grouped batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/results/encode"))
    p.add_argument("--name", default="encode")
    args = p.parse_args()
    torch.set_num_threads(1)
    tagger = load_checkpoint(args.model).tagger
    tokens = tweets(args.posts)
    lengths = np.array([len(t) for t in tokens])
    report: dict = {"machine": machine(), "revision": git_revision(), "model": str(args.model),
                    "posts": len(tokens), "tokens_mean": round(float(lengths.mean()), 1),
                    "tokens_max": int(lengths.max()),
                    "bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    "posts_per_s": {}}
    seconds, reference = best_of(args.repeats, lambda: arrival_order(tagger, tokens))
    report["posts_per_s"][f"arrival order, batches of {ARRIVAL_BATCH}"] = round(
        len(tokens) / seconds)
    worst = 0.0
    for size in [int(s) for s in args.group_sizes.split(",")]:
        seconds, out = best_of(args.repeats, lambda size=size: tagger.embed_all(tokens, size))
        report["posts_per_s"][f"by length, batches of {size}"] = round(len(tokens) / seconds)
        worst = max(worst, float(np.abs(out - reference).max()))
    report["fp32_max_abs_diff_to_arrival_order"] = worst
    seconds, low = best_of(args.repeats, lambda: tagger.embed_all(tokens, bf16=True))
    report["posts_per_s"]["by length, batches of 64, bf16"] = round(len(tokens) / seconds)
    cos = cosines(reference, low)
    report["bf16_cosine_to_fp32"] = {"min": round(float(cos.min()), 6),
                                     "mean": round(float(cos.mean()), 7)}
    report["bf16_neighbour_recall_at_20"] = round(neighbour_recall(reference, low, 20), 4)
    for way, rate in report["posts_per_s"].items():
        print(f"{way:40s} {rate:>7,} posts/s")
    print(f"fp32 max |difference| to arrival order: {worst:.2e}; bf16 cosine to fp32: "
          f"min {cos.min():.6f}, mean {cos.mean():.7f}; nearest 20 posts by cosine, bf16 vs "
          f"fp32: recall {report['bf16_neighbour_recall_at_20']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
