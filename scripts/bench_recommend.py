#!/usr/bin/env python
"""Time the full document-recommendation evaluation (paper Table 5) at one dimension.

Every method on the howyoutagtweets protocol (history = train posts, target = each user's first
valid post, 10,000 negatives): TF-IDF BoW, Word2Vec, WSABIE, #TagSpace, and both sums with BoW.
Timed: building the task, embedding every post, the max-cosine score matrices and the metrics.
Not timed: reading files, loading the models, and training Word2Vec (that is model training).

Usage: python scripts/bench_recommend.py --train train.csv --valid valid.csv \\
           --wsabie runs/wsabie64 --tagspace runs/hyt64 [--out docs/results/bench_recommend.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tagspace.baselines import Word2VecScorer
from tagspace.bow import BagOfWords
from tagspace.checkpoint import load_checkpoint
from tagspace.dataset import read_posts
from tagspace.recommend import build_task, max_cosine_matrix, metrics_from_scores, unit_rows
from tagspace.vocab import Vocabulary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--valid", type=Path, required=True)
    p.add_argument("--wsabie", type=Path, required=True)
    p.add_argument("--tagspace", type=Path, required=True)
    p.add_argument("--negatives", type=int, default=10_000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    train, valid = list(read_posts(args.train)), list(read_posts(args.valid))
    wsabie = load_checkpoint(args.wsabie).tagger
    tagspace = load_checkpoint(args.tagspace).tagger
    dim = tagspace.model.config.dim
    w2v = Word2VecScorer(train, Vocabulary.build(p.tags for p in train), dim)
    parts: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = fn()
        parts[name] = round(time.perf_counter() - t0, 2)
        return out

    start = time.perf_counter()
    task = timed("task", lambda: build_task(valid, args.negatives, 0, history_posts=train))
    tokens = [q.tokens for q in task.posts]
    scores = {
        "bow": timed("bow", lambda: max_cosine_matrix(task, BagOfWords(tokens).transform(tokens))),
        "w2v": timed("w2v", lambda: max_cosine_matrix(
            task, unit_rows(np.stack([w2v.embed(t) for t in tokens])))),
        "wsabie": timed("wsabie", lambda: max_cosine_matrix(
            task, unit_rows(wsabie.embed_all(tokens)))),
        "tagspace": timed("tagspace", lambda: max_cosine_matrix(
            task, unit_rows(tagspace.embed_all(tokens)))),
    }
    scores["wsabie+bow"] = scores["wsabie"] + scores["bow"]
    scores["tagspace+bow"] = scores["tagspace"] + scores["bow"]
    metrics = timed("metrics", lambda: {k: metrics_from_scores(v).to_dict()
                                        for k, v in scores.items()})
    total = time.perf_counter() - start
    report = {"seconds": round(total, 1), "parts": parts, "users": len(task.users),
              "candidates_per_user": args.negatives + 1, "dim": dim, "metrics": metrics,
              "machine": f"{platform.node()}: {os.cpu_count()} cores {platform.machine()}, "
                         f"torch {torch.__version__} threads {torch.get_num_threads()}"}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
