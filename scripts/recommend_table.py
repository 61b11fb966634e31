#!/usr/bin/env python
"""The paper's Table 5 on real users: document recommendation by max cosine over history.

Rows: TF-IDF bag of words, Word2Vec (sum of word vectors), each given model alone, and each
model + BoW (model score + w x BoW score). The mixing weight w is chosen on a task built from the
training posts only (history = all but each user's last training post, target = that last post),
then applied to the evaluation task (history = training posts, target = each user's first
validation post). Writes recommend.md and recommend.json into --out.

Usage: python scripts/recommend_table.py --train train.csv --valid valid.csv \\
           --model runs/wsabie64 --model runs/hyt64 --out runs/recommend
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tagspace.baselines import Word2VecScorer
from tagspace.bow import BagOfWords
from tagspace.checkpoint import load_checkpoint
from tagspace.dataset import read_posts
from tagspace.recommend import (
    RecommendTask,
    best_mix_weight,
    build_task,
    max_cosine_matrix,
    metrics_from_scores,
    mix_quality,
    unit_rows,
    zscore_rows,
)
from tagspace.vocab import Vocabulary

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def score_matrix(task: RecommendTask, kind: str, payload: object) -> np.ndarray:
    tokens = [p.tokens for p in task.posts]
    if kind == "bow":
        vectors = BagOfWords(tokens).transform(tokens)
    elif kind == "w2v":
        vectors = unit_rows(np.stack([payload.embed(t) for t in tokens]))  # type: ignore[attr-defined]
    else:
        vectors = unit_rows(payload.embed_all(tokens))  # type: ignore[attr-defined]
    return max_cosine_matrix(task, vectors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True, help="history posts (and W2V training)")
    p.add_argument("--valid", type=Path, required=True, help="each user's first post: target")
    p.add_argument("--model", type=Path, action="append", default=[],
                   help="a `tagspace train` directory (repeatable): one row alone, one + BoW")
    p.add_argument("--w2v-dim", type=int, action="append", default=[],
                   help="Word2Vec row at this dimension (repeatable; default 64)")
    p.add_argument("--negatives", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    start = time.perf_counter()
    train = list(read_posts(args.train))
    valid = list(read_posts(args.valid))
    tune = build_task(train, args.negatives, args.seed)
    test = build_task(valid, args.negatives, args.seed, history_posts=train)
    tags = Vocabulary.build(p.tags for p in train)
    w2v_seconds = 0.0
    methods: list[tuple[str, str, object]] = [("TF-IDF BoW", "bow", None)]
    for dim in args.w2v_dim or [64]:
        t0 = time.perf_counter()
        methods.append((f"Word2Vec {dim}", "w2v", Word2VecScorer(train, tags, dim)))
        w2v_seconds += time.perf_counter() - t0
    for path in args.model:
        tagger = load_checkpoint(path).tagger
        methods.append((f"{tagger.name} {tagger.model.config.dim}", "model", tagger))
    rows = []
    bow = {id(t): score_matrix(t, "bow", None) for t in (tune, test)}
    for name, kind, payload in methods:
        t0 = time.perf_counter()
        if kind == "bow":
            scores = bow
        elif kind == "model":  # the tuning task is only needed to choose the BoW weight
            scores = {id(t): score_matrix(t, kind, payload) for t in (tune, test)}
        else:
            scores = {id(test): score_matrix(test, kind, payload)}
        rows.append({"method": name, **metrics_from_scores(scores[id(test)]).to_dict(),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
        if kind == "model":  # raw cosines summed, or per-user z-scores: chosen on tuning
            best = None
            for label, norm in (("", lambda x: x), ("z-scores, ", zscore_rows)):
                model_s, bow_s = norm(scores[id(tune)]), norm(bow[id(tune)])
                w = best_mix_weight(model_s, bow_s, WEIGHTS)
                quality = mix_quality(model_s, bow_s, w)
                if best is None or quality > best[0]:
                    best = (quality, label, norm, w)
            _, label, norm, w = best
            mixed = metrics_from_scores(norm(scores[id(test)]) + w * norm(bow[id(test)]))
            rows.append({"method": f"{name} + BoW ({label}w={w})", **mixed.to_dict()})
            print(rows[-1], flush=True)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "seconds": round(seconds, 1),
              "seconds_without_w2v_training": round(seconds - w2v_seconds, 1),
              "n_users": len(test.users), "tuning_users": len(tune.users),
              "skipped_users": test.skipped_users, "negatives": args.negatives}
    (args.out / "recommend.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| method | P@1 | R@10 | R@50 |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['p_at_1']:.4f} | {r['r_at_10']:.4f} | {r['r_at_50']:.4f} |"
              for r in rows]
    (args.out / "recommend.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(test.users)} users, {args.negatives} negatives each, {seconds:.0f} s "
          f"({seconds - w2v_seconds:.0f} s without Word2Vec training)")


if __name__ == "__main__":
    main()
