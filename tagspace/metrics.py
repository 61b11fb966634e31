"""Hashtag-ranking metrics exactly as ``../shared/CONTRACT.md`` defines them.

For each post with gold set G and a ranking of all N tags the method knows:
- P@1: fraction of posts whose top tag is in G;
- R@10: sum |G ∩ top10| / sum |G| (micro-averaged, as fastText's ``test``);
- mean rank: mean over gold tags of the 1-based rank; an unknown gold tag ranks N + 1.
Unknown gold tags are misses; the ``_known`` variants drop them (and posts left without gold).
Ties are broken by tag id, so a rank is the position in a stable sort of the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RankingMetrics:
    p_at_1: float
    r_at_10: float
    mean_rank: float
    p_at_1_known: float
    r_at_10_known: float
    mean_rank_known: float
    n_posts: int
    n_gold_tags: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def gold_ranks(scores: np.ndarray, gold: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-based ranks of each post's known gold tag ids in its row of ``scores`` (P, N)."""
    n_tags = scores.shape[1]
    tag_ids = np.arange(n_tags)
    out = []
    for row, ids in zip(scores, gold, strict=True):
        s = row[ids][:, None]  # (G, 1)
        ahead = (row[None, :] > s) | ((row[None, :] == s) & (tag_ids[None, :] < ids[:, None]))
        out.append(1 + ahead.sum(1).astype(np.int64))
    return out


def ranking_metrics(
    known_ranks: Sequence[np.ndarray], n_unknown: Sequence[int], n_tags: int
) -> RankingMetrics:
    """Aggregate per-post ranks of known gold tags plus counts of unknown gold tags."""
    if len(known_ranks) != len(n_unknown):
        raise ValueError("known_ranks and n_unknown differ in length")
    n_posts = len(known_ranks)
    if n_posts == 0:
        raise ValueError("no posts to evaluate")
    hits1 = sum(bool(np.any(r == 1)) for r in known_ranks)
    hits10 = sum(int(np.count_nonzero(r <= 10)) for r in known_ranks)
    n_known = sum(len(r) for r in known_ranks)
    n_gold = n_known + int(sum(n_unknown))
    rank_sum = sum(int(r.sum()) for r in known_ranks)
    posts_known = sum(1 for r in known_ranks if len(r))
    return RankingMetrics(
        p_at_1=hits1 / n_posts,
        r_at_10=hits10 / max(n_gold, 1),
        mean_rank=(rank_sum + (n_tags + 1) * int(sum(n_unknown))) / max(n_gold, 1),
        p_at_1_known=hits1 / posts_known if posts_known else 0.0,
        r_at_10_known=hits10 / n_known if n_known else 0.0,
        mean_rank_known=rank_sum / n_known if n_known else float("nan"),
        n_posts=n_posts,
        n_gold_tags=n_gold,
    )
