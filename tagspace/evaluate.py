"""Evaluate any tag scorer on posts with the contract's metrics, batched, with progress shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tagspace.dataset import Post
from tagspace.metrics import RankingMetrics, gold_ranks, ranking_metrics
from tagspace.progress import progress_bar
from tagspace.vocab import Vocabulary


class TagScorer(Protocol):
    """Anything that scores every tag of its vocabulary for a batch of posts."""

    tags: Vocabulary

    def scores(self, posts: Sequence[Post]) -> np.ndarray:  # (P, len(tags))
        ...


@dataclass
class Evaluation:
    metrics: RankingMetrics
    best_rank: np.ndarray  # per post: rank of its best gold tag (N + 1 if none known)
    mean_rank: np.ndarray  # per post: mean rank of its gold tags


def evaluate(
    scorer: TagScorer,
    posts: Sequence[Post],
    batch_size: int = 512,
    progress: bool = True,
    desc: str = "evaluate",
) -> Evaluation:
    """Rank every tag for each post that has gold tags; posts without tags are ignored."""
    posts = [p for p in posts if p.tags]
    if not posts:
        raise ValueError("no post with gold tags to evaluate")
    n_tags = len(scorer.tags)
    known, unknown = [], []
    best, mean = np.empty(len(posts)), np.empty(len(posts))
    bar = progress_bar(len(posts), desc, unit="post", disable=not progress)
    for start in range(0, len(posts), batch_size):
        chunk = posts[start : start + batch_size]
        gold = [np.asarray(scorer.tags.encode(p.tags), np.int64) for p in chunk]
        ranks = gold_ranks(scorer.scores(chunk), gold)
        for i, (p, r) in enumerate(zip(chunk, ranks, strict=True)):
            missing = len(p.tags) - len(r)
            known.append(r)
            unknown.append(missing)
            all_ranks = np.concatenate([r, np.full(missing, n_tags + 1)])
            best[start + i], mean[start + i] = all_ranks.min(), all_ranks.mean()
        bar.update(len(chunk))
    bar.close()
    return Evaluation(ranking_metrics(known, unknown, n_tags), best, mean)
