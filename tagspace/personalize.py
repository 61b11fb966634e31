"""The author's hashtag history as a switchable part of the scorer (beyond the paper).

Authors reuse their hashtags. An author's profile is the count of each tag in their past posts;
the personalized score of tag t for a post by author u is

    s(t) = z(content(t)) + weight * log(1 + count_u(t)),

where z standardises the content scores over all tags (so one weight fits any content model's
scale). ``weight`` is tuned on validation data only (``tune_weight``); an author with no
profile gets the content ranking unchanged. The daemon feeds the same component from Redis.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tagspace.dataset import Post
from tagspace.evaluate import TagScorer, evaluate
from tagspace.metrics import RankingMetrics
from tagspace.vocab import Vocabulary

WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 1000.0)


class AuthorProfiles:
    """user id -> Counter of the tags they used."""

    def __init__(self, counts: Mapping[str, Counter[str]] | None = None):
        self.counts: dict[str, Counter[str]] = defaultdict(Counter, counts or {})

    @classmethod
    def from_posts(cls, posts: Iterable[Post]) -> AuthorProfiles:
        profiles = cls()
        for post in posts:
            profiles.add(post)
        return profiles

    def add(self, post: Post) -> None:
        if post.user_id is not None and post.tags:
            self.counts[post.user_id].update(post.tags)

    def get(self, user_id: str | None) -> Counter[str] | None:
        if user_id is None:
            return None
        return self.counts.get(user_id)

    def __len__(self) -> int:
        return len(self.counts)


def personalize_scores(
    content: np.ndarray,
    tags: Vocabulary,
    histories: Sequence[Mapping[str, int] | None],
    weight: float,
) -> np.ndarray:
    """Combine (P, N) content scores with each post's author history (None: no profile)."""
    mean = content.mean(axis=1, keepdims=True)
    std = content.std(axis=1, keepdims=True)
    out = (content - mean) / np.where(std > 0, std, 1.0)
    for row, history in zip(out, histories, strict=True):
        if not history:
            continue
        ids, counts = [], []
        for tag, count in history.items():
            i = tags.get(tag)
            if i is not None and count > 0:
                ids.append(i)
                counts.append(count)
        if ids:
            row[ids] += weight * np.log1p(np.asarray(counts, np.float64))
    return out


class PersonalizedScorer:
    """A ``TagScorer`` that adds the author's history to another scorer's content scores."""

    def __init__(self, content: TagScorer, profiles: AuthorProfiles, weight: float):
        self.content = content
        self.tags = content.tags
        self.profiles = profiles
        self.weight = weight

    @property
    def name(self) -> str:
        return f"{getattr(self.content, 'name', 'model')} + author"

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        histories = [self.profiles.get(p.user_id) for p in posts]
        return personalize_scores(self.content.scores(posts), self.tags, histories, self.weight)


def tune_weight(
    content: TagScorer,
    profiles: AuthorProfiles,
    valid: Sequence[Post],
    grid: Sequence[float] = WEIGHT_GRID,
    progress: bool = False,
) -> tuple[float, dict[float, RankingMetrics]]:
    """The grid weight with the best P@1 + R@10 on ``valid`` (never the test posts)."""
    cached = _CachedScorer(content, valid)
    results = {}
    for weight in grid:
        scorer = PersonalizedScorer(cached, profiles, weight)
        results[weight] = evaluate(scorer, valid, progress=progress, desc=f"weight {weight}").metrics
    best = max(grid, key=lambda w: (results[w].p_at_1 + results[w].r_at_10, -w))
    return best, results


class _CachedScorer:
    """Content scores computed once per post for a grid search."""

    def __init__(self, scorer: TagScorer, posts: Sequence[Post]):
        self.tags = scorer.tags
        self.name = getattr(scorer, "name", "model")
        self._rows: dict[int, np.ndarray] = {}
        for start in range(0, len(posts), 512):
            chunk = posts[start : start + 512]
            for post, row in zip(chunk, scorer.scores(chunk), strict=True):
                self._rows[id(post)] = row

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        return np.stack([self._rows[id(p)] for p in posts])
