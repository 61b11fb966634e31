"""``tagspace prequential``: replay a time-ordered file through the online learner, test then
train, and report the P@1 / R@10 curve (``tagspace.prequential``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tagspace.cli import Timer, add_format, load_posts, print_metrics

log = logging.getLogger("tagspace")


def prequential_args(p: argparse.ArgumentParser) -> None:
    p.epilog = ("example: tagspace prequential --data train.csv --data valid.csv --lr 0.02 "
                "--json runs/preq.json --plot runs/preq.png  (the daemon's online settings "
                "are these options; docs/MODEL.md has the study that chose their defaults)")
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="posts in time order (repeatable: files are concatenated; posts that "
                   "all carry a time are sorted by it)")
    p.add_argument("--model", type=Path, help="start from this `tagspace train` model "
                   "(default: a fresh model that learns everything from the stream)")
    p.add_argument("--limit", type=int, help="replay only the first N posts")
    p.add_argument("--lr", type=float, default=0.02, help="AdaGrad step")
    p.add_argument("--negatives", type=int, default=500, help="WARP negatives per step")
    p.add_argument("--batch-size", type=int, default=16, help="posts per step")
    p.add_argument("--min-word-count", type=int, default=1, help="admission: word occurrences")
    p.add_argument("--min-tag-count", type=int, default=2, help="admission: tag occurrences")
    p.add_argument("--word-capacity", type=int, default=200_000, help="rows for words")
    p.add_argument("--tag-capacity", type=int, default=100_000, help="rows for hashtags")
    p.add_argument("--dim", type=int, default=64, help="embedding size (fresh model)")
    p.add_argument("--hidden", type=int, default=1000, help="convolution units (fresh model)")
    p.add_argument("--window", type=int, default=1000, help="tagged posts per curve point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the report (with the curve) as JSON")
    p.add_argument("--plot", type=Path, help="write the curve as a PNG")
    add_format(p)


def cmd_prequential(args: Any) -> int:
    import torch

    from tagspace.checkpoint import load_checkpoint
    from tagspace.hogwild import TrainConfig
    from tagspace.model import ModelConfig
    from tagspace.online import Capacity, OnlineTagSpace, restore_online
    from tagspace.prequential import prequential
    from tagspace.progress import progress_bar

    posts = load_posts(args.data, args.format, require_tags=False)
    if all(p.ts is not None for p in posts):
        posts.sort(key=lambda p: p.ts or 0.0)  # stable: file order breaks ties
    posts = posts[: args.limit] if args.limit else posts
    capacity = Capacity(args.word_capacity, args.tag_capacity, args.min_word_count,
                        args.min_tag_count)
    train = TrainConfig(lr=args.lr, batch_size=args.batch_size, negatives=args.negatives,
                        positives="all", seed=args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # as one Hogwild worker of the daemon
    if args.model:
        # a daemon checkpoint as the daemon restores it: rows in place, last-seen clocks kept
        checkpoint = load_checkpoint(args.model, keep_free_rows=True)
        online = restore_online(checkpoint.tagger, capacity, train, checkpoint.arrays)
    else:
        config = ModelConfig(encoder="conv", dim=args.dim, hidden=args.hidden, dropout=0.0,
                             word_tag_share=True)
        online = OnlineTagSpace.fresh(config, capacity, train, seed=args.seed)
    bar = progress_bar(len(posts), "prequential", unit="post", disable=args.quiet)
    with Timer() as timer:
        report = prequential(online, posts, args.batch_size, args.window, bar.update)
    bar.close()
    result = {k: v for k, v in report.to_dict().items() if k != "curve"}
    result["seconds"] = round(timer.seconds, 1)
    result["posts_per_s"] = round(len(posts) / max(timer.seconds, 1e-9), 1)
    print_metrics(result, None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    if k not in ("func", "json", "plot", "config")}
        args.json.write_text(json.dumps({"settings": settings, **report.to_dict(),
                                         **result}, indent=2, default=str) + "\n")
    if args.plot:
        from tagspace.plot import plot_prequential

        plot_prequential([(", ".join(p.name for p in args.data), report)], args.plot)
    return 0
