"""Personalized document recommendation with post embeddings (paper section 4.3).

For each user with >= 2 posts in time order, the history is all but the last post and the target
is the last; the target is ranked against ``negatives`` posts drawn (seeded) from other users. A
candidate's score is the max over the history of the cosine similarity between post
representations (``../shared/CONTRACT.md``). Scoring is one matrix product per user.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sps

from tagspace.dataset import Post

Vectors = np.ndarray | sps.csr_matrix  # unit rows, one per post: cosine = dot product


@dataclass(frozen=True)
class RecommendMetrics:
    p_at_1: float
    r_at_10: float
    r_at_50: float
    n_users: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class RecommendTask:
    """Per user: history post indices and the target index into ``posts``; the candidate pool."""

    posts: list[Post]
    users: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray
    negatives: np.ndarray  # (U, n_negatives) indices into posts, never the user's own
    skipped_users: int  # users with a single post


def build_task(
    posts: Sequence[Post], negatives: int = 10_000, seed: int = 0,
    history_posts: Sequence[Post] | None = None,
) -> RecommendTask:
    """The evaluation set. With ``history_posts``, a user's history is their posts there and the
    target is their first post in ``posts`` (the howyoutagtweets train -> valid protocol)."""
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    pool: list[Post] = list(history_posts or []) + list(posts)
    n_history = len(history_posts or [])
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, post in enumerate(pool):
        if post.user_id is not None:
            by_user[post.user_id].append(i)
    users, histories, targets, skipped = [], [], [], 0
    for user, idx in by_user.items():
        if history_posts is not None:
            past = [i for i in idx if i < n_history]
            later = [i for i in idx if i >= n_history]
            if not past or not later:
                skipped += 1
                continue
            past = sorted(past, key=lambda i: pool[i].ts or 0.0)
            target = min(later, key=lambda i: (pool[i].ts or 0.0, i))
        else:
            if len(idx) < 2:
                skipped += 1
                continue
            ordered = sorted(idx, key=lambda i: (pool[i].ts or 0.0, i))
            past, target = ordered[:-1], ordered[-1]
        users.append(user)
        histories.append(np.asarray(past, np.int64))
        targets.append(target)
    if not users:
        raise ValueError("no user has both a history and a target post")
    rng = np.random.default_rng(seed)
    owner = np.array([p.user_id or "" for p in pool], dtype=object)
    if negatives > len(pool) - max(len(v) for v in by_user.values()):
        raise ValueError(f"not enough posts from other users for {negatives} negatives")
    drawn = np.empty((len(users), negatives), np.int64)
    for row, user in enumerate(users):
        picks = rng.integers(len(pool), size=negatives)
        own = owner[picks] == user
        while own.any():  # redraw the user's own posts: they are never candidates
            picks[own] = rng.integers(len(pool), size=int(own.sum()))
            own = owner[picks] == user
        drawn[row] = picks
    return RecommendTask(pool, users, histories, np.asarray(targets, np.int64), drawn, skipped)


def max_cosine_scores(history: np.ndarray | sps.csr_matrix,
                      candidates: np.ndarray | sps.csr_matrix) -> np.ndarray:
    """(H, D) and (C, D) unit rows -> (C,): each candidate's max cosine over the history."""
    sims = history @ candidates.T  # (H, C)
    if sps.issparse(sims):
        sims = sims.toarray()
    return np.asarray(sims).max(axis=0)


def evaluate_recommendation(
    task: RecommendTask, scores_for_user: Callable[[int, np.ndarray], np.ndarray]
) -> RecommendMetrics:
    """``scores_for_user(u, candidates)`` scores [target, *negatives]; the target's rank counts
    the candidates scoring strictly higher."""
    ranks = np.empty(len(task.users), np.int64)
    for u in range(len(task.users)):
        candidates = np.concatenate([[task.targets[u]], task.negatives[u]])
        scores = scores_for_user(u, candidates)
        ranks[u] = 1 + int(np.count_nonzero(scores[1:] > scores[0]))
    return RecommendMetrics(float(np.mean(ranks == 1)), float(np.mean(ranks <= 10)),
                            float(np.mean(ranks <= 50)), len(ranks))


def max_cosine_scorer(
    task: RecommendTask, vectors: Vectors, extra: Vectors | None = None, weight: float = 0.0
) -> Callable[[int, np.ndarray], np.ndarray]:
    """Scores for ``evaluate_recommendation``: max cosine over the user's history in ``vectors``
    (unit rows of every post of ``task``), plus ``weight`` x the same in ``extra`` (a sum of two
    representations, such as model + BoW)."""

    def score(u: int, candidates: np.ndarray) -> np.ndarray:
        history = task.histories[u]
        scores = max_cosine_scores(vectors[history], vectors[candidates])
        if extra is not None and weight:
            scores = scores + weight * max_cosine_scores(extra[history], extra[candidates])
        return scores

    return score


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)
