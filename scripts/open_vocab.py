#!/usr/bin/env python
"""Open-vocabulary hashtag suggestion (tagspace/open_vocab.py) against the known-tags ranking.

1. The training file is split by line, 80 / 20 with a fixed seed (``--splits`` such splits,
   seeds --seed, --seed + 1, ...): a model is trained on each 80 part (`tagspace train`, the
   CLI's defaults, or `--fold-model`), and the open-vocabulary scorer is fitted on the 20 parts
   with their model's content scores, so that it learns from scores of posts the model did not
   train on. Copy statistics of a 20 part come from its 80 part.
2. Evaluated on the validation posts with `--model` (trained on the whole training file) and
   copy statistics from the whole training file: P@1 and R@10 with every gold tag (a
   never-seen gold tag is a possible hit), and the `_known` variants; content only, and
   personalized by the authors' training posts (the model's tuned author weights).
3. Ablation: the scorer refitted without each candidate source in turn.

Usage: python scripts/open_vocab.py --model runs/q-d64-bf16off [--train F] [--valid F]
       [--splits 2] [--fold-model DIR ...] [--dim 64] [--json F] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tagspace.checkpoint import load_checkpoint
from tagspace.dataset import Post, read_posts
from tagspace.open_vocab import (
    SOURCES,
    Candidates,
    CopyStats,
    ListedColumns,
    OpenVocabConfig,
    OpenVocabScorer,
    candidates_for_row,
    known_top,
    open_metrics,
    save_scorers,
)
from tagspace.personalize import (
    DEFAULT_WEIGHTS,
    AuthorProfiles,
    PersonalizedScorer,
    load_personalization,
)

HYT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "howyoutagtweets"


def split_lines(path: Path, out: Path, share: float, seed: int) -> tuple[Path, Path]:
    lines = path.read_bytes().splitlines(keepends=True)
    order = np.random.default_rng(seed).permutation(len(lines))
    cut = int(len(lines) * share)
    parts = []
    for name, idx in (("model", order[:cut]), ("scorer", order[cut:])):
        part = out / f"{name}{path.suffix}"
        part.write_bytes(b"".join(lines[i] for i in sorted(idx)))
        parts.append(part)
    return parts[0], parts[1]


def train_fold_model(data: Path, out: Path, dim: int) -> Path:
    cmd = [sys.executable, "-m", "tagspace.cli", "train", "--data", str(data), "--out", str(out),
           "--dim", str(dim), "--bf16", "off", "--quiet"]
    print("training the fold model:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def content_and_personal(model_dir: Path, profile_posts: Sequence[Post],
                         personalization: tuple[Any, Any]) -> tuple[Any, Any]:
    """The model's scorer, and it personalized by ``profile_posts`` with ``personalization``
    (the full model's tuned author weights and IDF)."""
    tagger = load_checkpoint(model_dir).tagger
    profiles = AuthorProfiles.from_posts(profile_posts)
    return tagger, PersonalizedScorer(tagger, profiles, *personalization)


def candidate_sets(scorer: Any, posts: Sequence[Post], stats: CopyStats,
                   config: OpenVocabConfig, profiles: AuthorProfiles | None) -> list[Candidates]:
    columns = ListedColumns.of(scorer.tags.tokens)
    out = []
    for start in range(0, len(posts), 512):
        chunk = posts[start : start + 512]
        for post, row in zip(chunk, scorer.scores(chunk), strict=True):
            history = profiles.get(post.user_id) if profiles is not None else None
            out.append(candidates_for_row(post.tokens, row, columns, stats, config, history))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained on the whole --train")
    p.add_argument("--train", type=Path, default=HYT / "train.csv")
    p.add_argument("--valid", type=Path, default=HYT / "valid.csv")
    p.add_argument("--fold-model", type=Path, action="append", default=[],
                   help="a model of the 80 part of split i, in order (repeatable; trained "
                   "where absent)")
    p.add_argument("--splits", type=int, default=1,
                   help="80/20 splits (seeds --seed, --seed + 1, ...): the scorer learns from "
                   "the 20 parts of all of them")
    p.add_argument("--dim", type=int, default=64, help="of the fold model, if trained here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="content,personalized",
                   help="content (no author) and/or personalized")
    p.add_argument("--json", type=Path)
    p.add_argument("--learning-rate", type=float, default=0.05,
                   help="of the scorer's boosting (larger: fewer trees, cheaper to serve)")
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="also refit without each candidate source in turn")
    p.add_argument("--save", type=Path,
                   help="a folder to write the scorers with every source (content and "
                   "personalized) into, for the daemon's open_vocab_scorers setting")
    args = p.parse_args()
    started = time.perf_counter()
    full_config = OpenVocabConfig()
    train = list(read_posts(args.train, require_tags=True))
    valid = list(read_posts(args.valid, require_tags=True))
    personalization = load_personalization(args.model, load_checkpoint(args.model).extra,
                                           DEFAULT_WEIGHTS)
    folds = []  # per split: (scorer posts, copy stats, content scorer, personalized, profiles)
    models = list(args.fold_model) + [None] * (args.splits - len(args.fold_model))
    with tempfile.TemporaryDirectory(prefix="tagspace-openvocab-") as tmp:
        for i, fold in enumerate(models[: args.splits]):
            work = Path(tmp) / f"split{i}"
            work.mkdir()
            model_part, scorer_part = split_lines(args.train, work, 0.8, args.seed + i)
            if fold is None or not (fold / "config.json").is_file():
                fold = train_fold_model(model_part, fold or work / "fold", args.dim)
            part_a = list(read_posts(model_part, require_tags=True))
            part_b = list(read_posts(scorer_part, require_tags=True))
            stats_a = CopyStats.from_posts(((q.tokens, q.tags) for q in part_a),
                                           full_config.max_concat)
            fold_content, fold_personal = content_and_personal(fold, part_a, personalization)
            folds.append((part_b, stats_a, fold_content, fold_personal,
                          AuthorProfiles.from_posts(part_a)))
            models[i] = fold
            print(f"split {i} (seed {args.seed + i}): {len(part_a)} + {len(part_b)} training "
                  f"posts (model + scorer)", flush=True)
    print(f"{len(valid)} validation posts")

    results: dict[str, Any] = {
        "machine": f"{platform.node()}, {platform.processor() or platform.machine()}",
        "model": str(args.model), "fold_models": [str(m) for m in models[: args.splits]],
        "seeds": [args.seed + i for i in range(args.splits)],
        "config": {"known_k": full_config.known_k, "max_concat": full_config.max_concat,
                   "learning_rate": args.learning_rate},
        "rows": [],
    }
    stats_all = CopyStats.from_posts(((q.tokens, q.tags) for q in train), full_config.max_concat)
    content, personal = content_and_personal(args.model, train, personalization)
    profiles_all = AuthorProfiles.from_posts(train)
    vocabulary = frozenset(content.tags.tokens)
    gold = [q.tags for q in valid]

    def row(name: str, rankings: list[list[str]], **extra: Any) -> None:
        m = open_metrics(rankings, gold, vocabulary)
        entry = {"name": name, **m.__dict__, **extra}
        results["rows"].append(entry)
        print(f"{name:48s} P@1 {m.p_at_1:.4f}  R@10 {m.r_at_10:.4f}  "
              f"(known: {m.p_at_1_known:.4f} / {m.r_at_10_known:.4f})", flush=True)

    served: dict[str, OpenVocabScorer] = {}  # per mode, the scorer with every source
    for mode, scorer, profiles in (("content", content, None),
                                   ("personalized", personal, profiles_all)):
        if mode not in args.modes.split(","):
            continue
        tops = []
        for start in range(0, len(valid), 512):
            tops += known_top(scorer.scores(valid[start : start + 512]), content.tags.tokens, 10)
        row(f"{mode}: known tags only (the model's ranking)", [[t for t, _ in top]
                                                               for top in tops])
        ablations = [("all sources", SOURCES)] + [
            (f"without {s}", tuple(x for x in SOURCES if x != s)) for s in SOURCES[1:]
            if args.ablation and not (s == "author" and mode == "content")]
        for label, sources in ablations:
            if mode == "content":
                sources = tuple(s for s in sources if s != "author")
            config = OpenVocabConfig(sources=sources)
            examples = []
            for part_b, stats_a, fold_content, fold_personal, profiles_a in folds:
                personalized = mode == "personalized"
                sets = candidate_sets(fold_personal if personalized else fold_content, part_b,
                                      stats_a, config, profiles_a if personalized else None)
                examples += list(zip(sets, [q.tags for q in part_b], strict=True))
            ranker = OpenVocabScorer.fit(examples, config, stats_all, seed=args.seed,
                                         learning_rate=args.learning_rate)
            if label == "all sources":
                served[mode] = ranker
            test_sets = candidate_sets(scorer, valid, stats_all, config, profiles)
            found = sum(bool(set(c.tags) & set(g)) for c, g in zip(test_sets, gold, strict=True))
            rankings = [[t for t, _ in ranker.rank(c)] for c in test_sets]
            row(f"{mode}: open vocabulary, {label}", rankings, sources=list(sources),
                trees=int(ranker.model.n_iter_),
                posts_with_a_gold_candidate=found,
                mean_candidates=float(np.mean([len(c.tags) for c in test_sets])))
    if args.save:
        save_scorers(args.save, served)
        print(f"scorers ({', '.join(served)}) written to {args.save}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
