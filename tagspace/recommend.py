"""Personalized document recommendation with post embeddings (paper section 4.3).

For each user with >= 2 posts in time order, the history is all but the last post and the target
is the last; the target is ranked against ``negatives`` distinct posts drawn (seeded, without
replacement) from other users. A candidate's score is the max over the history of the cosine
similarity between post representations (``../shared/CONTRACT.md``). Scoring is one matrix
product per batch of users.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TypeAlias

import numpy as np
import scipy.sparse as sps

from tagspace.dataset import Post

Vectors: TypeAlias = np.ndarray | sps.csr_matrix  # unit rows, one per post: cosine = dot product


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
    negatives: np.ndarray  # (U, n_negatives) distinct indices into posts, never the user's own
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
    if negatives > len(pool) - max(len(by_user[u]) for u in users):
        raise ValueError(f"not enough posts from other users for {negatives} negatives")
    rng = np.random.default_rng(seed)
    drawn = np.stack([_draw_others(len(pool), np.asarray(by_user[u]), negatives, rng)
                      for u in users])
    return RecommendTask(pool, users, histories, np.asarray(targets, np.int64), drawn, skipped)


def _draw_others(n_pool: int, own: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct pool indices, uniform over the posts outside ``own`` (sorted ascending).

    Without replacement: a repeated candidate would count twice against the target. A rank among
    the other posts maps to a pool index by skipping the own posts before it."""
    ranks = rng.choice(n_pool - len(own), size=k, replace=False)
    return ranks + np.searchsorted(own - np.arange(len(own)), ranks, side="right")


def candidate_matrix(task: RecommendTask) -> np.ndarray:
    """(U, 1 + negatives) post indices: column 0 is each user's target."""
    return np.concatenate([task.targets[:, None], task.negatives], axis=1)


def max_cosine_matrix(task: RecommendTask, vectors: Vectors, max_rows: int = 1024) -> np.ndarray:
    """(U, 1 + negatives): each candidate's max cosine over its user's history.

    ``vectors`` holds unit rows for every post of ``task``. Dense vectors: one (history x
    candidates) product per user. Sparse (TF-IDF): users are taken in batches whose histories
    total about ``max_rows`` posts, one (rows x posts) sparse product per batch, then a gather of
    each user's candidate columns (a sparse row gather per user is slower). Never a Python loop
    over candidates. Computed once per representation, sums such as model + BoW are additions."""
    candidates = candidate_matrix(task)
    out = np.empty(candidates.shape, np.float64)  # float32 would turn near-ties into ties
    if not sps.issparse(vectors):  # dense: gathering each user's candidates is cheapest
        for v, history in enumerate(task.histories):
            out[v] = (vectors[history] @ vectors[candidates[v]].T).max(axis=0)
        return out
    users = len(task.users)
    u = 0
    while u < users:
        stop, rows = u, 0
        while stop < users and (stop == u or rows + len(task.histories[stop]) <= max_rows):
            rows += len(task.histories[stop])
            stop += 1
        history = np.concatenate(task.histories[u:stop])
        sims = vectors[history] @ vectors.T  # (rows, posts)
        sims = sims.toarray() if sps.issparse(sims) else np.asarray(sims)
        offset = 0
        for v in range(u, stop):
            n = len(task.histories[v])
            out[v] = sims[offset:offset + n][:, candidates[v]].max(axis=0)
            offset += n
        u = stop
    return out


def metrics_from_scores(scores: np.ndarray) -> RecommendMetrics:
    """(U, 1 + negatives) scores, target in column 0; its rank is 1 + the candidates scoring at
    least as high. Ties count against the target: a representation that scores everything
    alike (all-zero BoW rows) must not rank every target first."""
    ranks = 1 + np.count_nonzero(scores[:, 1:] >= scores[:, :1], axis=1)
    return RecommendMetrics(float(np.mean(ranks == 1)), float(np.mean(ranks <= 10)),
                            float(np.mean(ranks <= 50)), len(ranks))


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """Each user's candidate scores standardised: model cosines (all high) and BoW cosines
    (mostly 0) then add on a common scale."""
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def mix_quality(model: np.ndarray, bow: np.ndarray, weight: float) -> float:
    """P@1 + R@10 + R@50 of model + weight x BoW: what the mixing weight is tuned on."""
    m = metrics_from_scores(model + weight * bow)
    return m.p_at_1 + m.r_at_10 + m.r_at_50


def best_mix_weight(model: np.ndarray, bow: np.ndarray, weights: Sequence[float]) -> float:
    """The BoW weight with the best ``mix_quality`` on these (tuning) scores; the first such
    weight on ties."""
    return max(weights, key=lambda w: mix_quality(model, bow, w))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)
