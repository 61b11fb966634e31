"""The author's hashtag history as a switchable part of the scorer (beyond the paper).

Authors reuse their hashtags, and reuse them on posts like their earlier ones. An author's
history is their past posts (tags, and the post embedding when the content model has one). The
personalized score of tag t for a post w by author u is

    s(t) = z(f(w, t)) + a * log(1 + count_u(t)) + b * max(0, max_{p in H_u, t in p} cos(w, p)),

where z standardises the content scores over all tags (so the weights fit any content model's
scale), count_u(t) is how often u used t, and the last term is the max cosine similarity between
this post and u's past posts that carried t: the same max-over-history primitive as the feed
recommender (paper section 4.3). ``a`` and ``b`` are tuned on validation data only
(``tune_weights``); an author with no history gets the content ranking unchanged. The daemon feeds
the same component from the author's history in Redis.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tagspace.dataset import Post
from tagspace.evaluate import TagScorer, evaluate
from tagspace.metrics import RankingMetrics
from tagspace.vocab import Vocabulary

COUNT_GRID = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)
SIMILARITY_GRID = (0.0, 1.0, 2.0, 4.0, 8.0)
MAX_HISTORY_POSTS = 200  # newest kept: the recent past predicts best and bounds the cost


@dataclass(frozen=True)
class PersonalizeWeights:
    count: float = 0.0  # a: weight of log(1 + count_u(t))
    similarity: float = 0.0  # b: weight of the max cosine to u's past posts with t

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class AuthorHistory:
    """One author's past: tag counts, and the tags and tokens of each recent past post."""

    counts: Counter[str] = field(default_factory=Counter)
    post_tags: list[tuple[str, ...]] = field(default_factory=list)
    post_tokens: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, tags: Sequence[str], tokens: Sequence[str] = ()) -> None:
        self.counts.update(tags)
        self.post_tags.append(tuple(tags))
        self.post_tokens.append(tuple(tokens))
        del self.post_tags[:-MAX_HISTORY_POSTS], self.post_tokens[:-MAX_HISTORY_POSTS]


class AuthorProfiles:
    """user id -> AuthorHistory, built from posts in time order."""

    def __init__(self) -> None:
        self.histories: dict[str, AuthorHistory] = {}

    @classmethod
    def from_posts(cls, posts: Iterable[Post]) -> AuthorProfiles:
        profiles = cls()
        for post in posts:
            profiles.add(post)
        return profiles

    def add(self, post: Post) -> None:
        if post.user_id is None or not post.tags:
            return
        self.histories.setdefault(post.user_id, AuthorHistory()).add(post.tags, post.tokens)

    def get(self, user_id: str | None) -> AuthorHistory | None:
        return None if user_id is None else self.histories.get(user_id)

    def __len__(self) -> int:
        return len(self.histories)


def personalize_scores(
    content: np.ndarray,
    tags: Vocabulary,
    histories: Sequence[AuthorHistory | None],
    weights: PersonalizeWeights,
    post_embeddings: np.ndarray | None = None,
    history_embeddings: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Combine (P, N) content scores with each post's author history (None: no history).

    ``post_embeddings`` (P, d) and ``history_embeddings`` (per post: (H, d) unit rows aligned
    with ``history.post_tags``) feed the similarity term; without them it is skipped.
    """
    mean = content.mean(axis=1, keepdims=True)
    std = content.std(axis=1, keepdims=True)
    out = (content - mean) / np.where(std > 0, std, 1.0)
    for row_index, history in enumerate(histories):
        if not history or not history.counts:
            continue
        row = out[row_index]
        if weights.count:
            known = [(tags.get(t), c) for t, c in history.counts.items()]
            ids = np.array([i for i, _ in known if i is not None], np.int64)
            counts = np.array([c for i, c in known if i is not None], np.float64)
            row[ids] += weights.count * np.log1p(counts)
        past = history_embeddings[row_index] if history_embeddings is not None else None
        if weights.similarity and past is not None and post_embeddings is not None:
            query = post_embeddings[row_index]
            query = query / max(float(np.linalg.norm(query)), 1e-8)
            sims = past @ query  # (H,) cosine to each past post
            best: dict[int, float] = {}
            for sim, post_tags in zip(sims, history.post_tags, strict=True):
                for t in post_tags:
                    i = tags.get(t)
                    if i is not None and sim > best.get(i, 0.0):
                        best[i] = float(sim)
            if best:
                row[np.fromiter(best, np.int64)] += weights.similarity * np.fromiter(
                    best.values(), np.float64)
    return out


class PersonalizedScorer:
    """A ``TagScorer`` that adds the author's history to another scorer's content scores."""

    def __init__(self, content: TagScorer, profiles: AuthorProfiles, weights: PersonalizeWeights):
        self.content = content
        self.tags = content.tags
        self.profiles = profiles
        self.weights = weights
        self._embed = getattr(content, "embed_tokens", None) if weights.similarity else None
        self._history_embeddings: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return f"{getattr(self.content, 'name', 'model')} + author"

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        histories = [self.profiles.get(p.user_id) for p in posts]
        embeddings, past = None, None
        if self._embed is not None:
            embeddings = _batched(self._embed, [p.tokens for p in posts])
            past = [self._past(p.user_id, h) if h else None for p, h in zip(posts, histories,
                                                                         strict=True)]
        return personalize_scores(self.content.scores(posts), self.tags, histories,
                                  self.weights, embeddings, past)

    def _past(self, user_id: str | None, history: AuthorHistory) -> np.ndarray:
        """Unit embeddings of the author's past posts, computed once per author."""
        assert user_id is not None and self._embed is not None
        if user_id not in self._history_embeddings:
            vectors = _batched(self._embed, history.post_tokens).astype(np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-8)
            self._history_embeddings[user_id] = vectors / norms
        return self._history_embeddings[user_id]


def _batched(embed_tokens, token_lists, size: int = 1024) -> np.ndarray:  # type: ignore[no-untyped-def]
    parts = [np.asarray(embed_tokens(token_lists[i : i + size]))
             for i in range(0, len(token_lists), size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def tune_weights(
    content: TagScorer,
    profiles: AuthorProfiles,
    valid: Sequence[Post],
    count_grid: Sequence[float] = COUNT_GRID,
    similarity_grid: Sequence[float] = SIMILARITY_GRID,
) -> tuple[PersonalizeWeights, dict[PersonalizeWeights, RankingMetrics]]:
    """The grid weights with the best P@1 + R@10 on ``valid`` (never the test posts)."""
    valid = [p for p in valid if p.tags]
    cached = _CachedScorer(content, valid)
    if cached.embed_tokens is None:
        similarity_grid = (0.0,)
    results = {}
    for a, b in itertools.product(count_grid, similarity_grid):
        weights = PersonalizeWeights(a, b)
        scorer = PersonalizedScorer(cached, profiles, weights)
        results[weights] = evaluate(scorer, valid, progress=False).metrics
    best = max(results, key=lambda w: (results[w].p_at_1 + results[w].r_at_10,
                                       -w.count - w.similarity))
    return best, results


class _CachedScorer:
    """Content scores (per post) and embeddings (per token tuple) computed once, for a grid."""

    def __init__(self, scorer: TagScorer, posts: Sequence[Post]):
        self.tags = scorer.tags
        self.name = getattr(scorer, "name", "model")
        self._inner_embed = getattr(scorer, "embed_tokens", None)
        self.embed_tokens = self._embed_cached if self._inner_embed else None
        self._scores: dict[int, np.ndarray] = {}
        self._vectors: dict[tuple[str, ...], np.ndarray] = {}
        for start in range(0, len(posts), 512):
            chunk = posts[start : start + 512]
            for post, row in zip(chunk, scorer.scores(chunk), strict=True):
                self._scores[id(post)] = row

    def _embed_cached(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        keys = [tuple(t) for t in token_lists]
        missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            for key, vector in zip(missing, _batched(self._inner_embed, missing), strict=True):
                self._vectors[key] = vector
        return np.stack([self._vectors[k] for k in keys])

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        return np.stack([self._scores[id(p)] for p in posts])
