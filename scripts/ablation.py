#!/usr/bin/env python
"""What closes the gap: #TagSpace variants on one split at one dimension, content only.

Each row changes one thing from the row above (the paper's set-up first), so the table reads as
the path from the paper's defaults to ours. Writes ablation.md and ablation.json into --out.

Usage: python scripts/ablation.py --train train.csv --test valid.csv --dim 64 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from tagspace.dataset import read_posts
from tagspace.evaluate import evaluate
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.training import VocabConfig, build_vocabularies, train_tagger

PAPER = {"init": False, "dropout": 0.0, "positives": "one", "share": False, "negatives": 1000}
STEPS = [
    ("the paper's set-up (random init, one positive per step)", {}),
    ("+ lookup tables from WSABIE (the paper's initialisation)", {"init": True}),
    ("+ dropout 0.5 on the pooled features", {"dropout": 0.5}),
    ("+ every gold tag a positive each step", {"positives": "all"}),
    ("+ word-tag sharing (learned bonus for tags that are words of the post)", {"share": True}),
    ("+ 4,000 negatives per block", {"negatives": 4000}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    train = list(read_posts(args.train, require_tags=True, require_tokens=True))
    test = list(read_posts(args.test, require_tags=True))
    vocabs = build_vocabularies(train, VocabConfig())
    rows = []
    settings = dict(PAPER)
    wsabie = {}
    for label, change in STEPS:
        settings.update(change)
        start = time.perf_counter()
        train_cfg = TrainConfig(epochs=args.epochs, lr=0.01, positives=settings["positives"],
                                negatives=settings["negatives"])
        init = None
        if settings["init"]:
            key = settings["positives"]
            if key not in wsabie:  # WSABIE trained the same way as the #TagSpace it seeds
                wsabie[key] = train_tagger(train, "wsabie", ModelConfig(dim=args.dim),
                                           replace(train_cfg, lr=0.05), vocabularies=vocabs)
            init = wsabie[key]
        model = ModelConfig(dim=args.dim, dropout=settings["dropout"],
                            word_tag_share=settings["share"])
        tagger = train_tagger(train, "tagspace", model, train_cfg, vocabularies=vocabs,
                              init_from=init)
        metrics = evaluate(tagger, test).metrics
        rows.append({"variant": label, "settings": dict(settings), **metrics.to_dict(),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{label}: P@1 {metrics.p_at_1:.4f} R@10 {metrics.r_at_10:.4f}", flush=True)

    for key, model in wsabie.items():  # the baseline each variant is measured against
        metrics = evaluate(model, test).metrics
        rows.append({"variant": f"WSABIE, positives={key} (reference)", "settings": {},
                     **metrics.to_dict(), "seconds": 0.0})

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"#TagSpace d={args.dim}, {args.epochs} epochs, {args.train.name} -> "
             f"{args.test.name}", "", "| variant | P@1 | R@10 | mean rank | s |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['p_at_1']:.4f} | {r['r_at_10']:.4f} | "
              f"{r['mean_rank']:.0f} | {r['seconds']:.0f} |" for r in rows]
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
