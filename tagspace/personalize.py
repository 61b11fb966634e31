"""The author's hashtag history as a switchable part of the scorer (beyond the paper).

Authors reuse their hashtags, and reuse them on posts like their earlier ones. An author's
history is their past posts (tags and tokens). The personalized score of tag t for a post w by
author u is

    s(t) = z(f(w, t)) + a * log(1 + count_u(t))
                      + b * max_{p in H_u with t} cos_model(w, p)
                      + c * max_{p in H_u with t} cos_tfidf(w, p)
                      + g * log(1 + count(t)),

z standardising the content scores over all tags (so the weights fit any content model's scale).
The two max-cosine terms are the feed recommender's max-over-history primitive (paper section 4.3)
with the model's post embeddings and with TF-IDF bags of words; the last is the tag's popularity
in training, which only matters between the author's tags. The weights are tuned on validation
data only (``tune_weights``); an author with no history gets the content ranking unchanged (all
author terms are zero, and the popularity term is added for every post alike). The daemon feeds
the same component from the author's history in Redis.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sps

from tagspace.bow import BagOfWords
from tagspace.dataset import Post
from tagspace.evaluate import TagScorer
from tagspace.metrics import RankingMetrics, gold_ranks, ranking_metrics
from tagspace.recommend import unit_rows
from tagspace.vocab import Vocabulary

MAX_HISTORY_POSTS = 200  # newest kept: the recent past predicts best and bounds the cost
GRID = {
    "count": (0.0, 2.0, 4.0, 6.0, 8.0),
    "similarity": (0.0, 2.0, 4.0),
    "lexical": (0.0, 2.0, 4.0, 8.0),
    "popularity": (0.0, 0.5),
}
EmbedFn = Callable[[Sequence[Sequence[str]]], np.ndarray]


@dataclass(frozen=True)
class PersonalizeWeights:
    count: float = 0.0  # a
    similarity: float = 0.0  # b: model-embedding max cosine
    lexical: float = 0.0  # c: TF-IDF max cosine
    popularity: float = 0.0  # g

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
    """user id -> AuthorHistory, built from posts given in time order."""

    def __init__(self) -> None:
        self.histories: dict[str, AuthorHistory] = {}

    @classmethod
    def from_posts(cls, posts: Iterable[Post]) -> AuthorProfiles:
        """Profiles from ``posts``, taken in time order when every post has a time."""
        posts = list(posts)
        if all(p.ts is not None for p in posts):
            posts.sort(key=lambda p: p.ts or 0.0)  # stable: file order breaks ties
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


@dataclass
class HistoryFeatures:
    """Per (post, tag) author features, sparse (P, N): nonzero only on the author's tags."""

    count: sps.csr_matrix
    similarity: sps.csr_matrix
    lexical: sps.csr_matrix


def history_features(
    tags: Vocabulary,
    histories: Sequence[AuthorHistory | None],
    model_sims: Sequence[np.ndarray | None] | None = None,
    lexical_sims: Sequence[np.ndarray | None] | None = None,
) -> HistoryFeatures:
    """``*_sims[i]``: cosine of post i to each of its author's past posts (aligned with
    ``history.post_tags``), or None; a tag's feature is the max over the posts that carry it."""
    shape = (len(histories), len(tags))
    parts: dict[str, tuple[list[int], list[int], list[float]]] = {
        k: ([], [], []) for k in ("count", "similarity", "lexical")}
    for row, history in enumerate(histories):
        if not history:
            continue
        for tag, n in history.counts.items():
            i = tags.get(tag)
            if i is not None:
                _append(parts["count"], row, i, float(np.log1p(n)))
        for name, sims in (("similarity", model_sims), ("lexical", lexical_sims)):
            if sims is None or sims[row] is None:
                continue
            best: dict[int, float] = {}
            for sim, post_tags in zip(sims[row], history.post_tags, strict=True):
                for tag in post_tags:
                    i = tags.get(tag)
                    if i is not None and sim > best.get(i, 0.0):
                        best[i] = float(sim)
            for i, value in best.items():
                _append(parts[name], row, i, value)
    built = {k: sps.csr_matrix((v[2], (v[0], v[1])), shape=shape, dtype=np.float32)
             for k, v in parts.items()}
    return HistoryFeatures(**built)


def _append(part: tuple[list[int], list[int], list[float]], row: int, col: int, value: float):
    part[0].append(row)
    part[1].append(col)
    part[2].append(value)


def combine(
    content: np.ndarray, features: HistoryFeatures, weights: PersonalizeWeights,
    popularity: np.ndarray,
) -> np.ndarray:
    """z(content) + the weighted author features + g * popularity, all (P, N)."""
    mean = content.mean(axis=1, keepdims=True)
    std = content.std(axis=1, keepdims=True)
    out = ((content - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    for name in ("count", "similarity", "lexical"):
        w = getattr(weights, name)
        if w:
            m = getattr(features, name).tocoo()
            np.add.at(out, (m.row, m.col), w * m.data)
    if weights.popularity:
        out += weights.popularity * popularity[None, :]
    return out


class PersonalizedScorer:
    """A ``TagScorer`` that adds the author's history to another scorer's content scores."""

    def __init__(self, content: TagScorer, profiles: AuthorProfiles, weights: PersonalizeWeights):
        self.content = content
        self.tags = content.tags
        self.profiles = profiles
        self.weights = weights
        self.popularity = np.log1p(np.asarray(content.tags.counts, np.float32))
        self._embed: EmbedFn | None = getattr(content, "embed_tokens", None)
        self._bow: BagOfWords | None = None
        self._history_vectors: dict[tuple[str, str], object] = {}

    @property
    def name(self) -> str:
        return f"{getattr(self.content, 'name', 'model')} + author"

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        return combine(self.content.scores(posts), self.features(posts), self.weights,
                       self.popularity)

    def features(self, posts: Sequence[Post], all_terms: bool = False) -> HistoryFeatures:
        histories = [self.profiles.get(p.user_id) for p in posts]
        model_sims = lexical_sims = None
        if self._embed is not None and (all_terms or self.weights.similarity):
            query = unit_rows(_embed(self._embed, [p.tokens for p in posts]))
            model_sims = [None if h is None else self._past("model", p.user_id, h) @ query[i]
                          for i, (p, h) in enumerate(zip(posts, histories, strict=True))]
        if all_terms or self.weights.lexical:
            bow = self._bag_of_words()
            query = bow.transform([p.tokens for p in posts])
            lexical_sims = [
                None if h is None
                else (self._past("bow", p.user_id, h) @ query[i].T).toarray()[:, 0]
                for i, (p, h) in enumerate(zip(posts, histories, strict=True))]
        return history_features(self.tags, histories, model_sims, lexical_sims)

    def _bag_of_words(self) -> BagOfWords:
        if self._bow is None:  # IDF from every history post
            corpus = [t for h in self.profiles.histories.values() for t in h.post_tokens]
            self._bow = BagOfWords(corpus)
        return self._bow

    def _past(self, kind: str, user_id: str | None, history: AuthorHistory):  # type: ignore[no-untyped-def]
        """Unit vectors of the author's past posts, computed once per author and kind."""
        key = (kind, user_id or "")
        if key not in self._history_vectors:
            if kind == "model":
                assert self._embed is not None
                self._history_vectors[key] = unit_rows(_embed(self._embed, history.post_tokens))
            else:
                self._history_vectors[key] = self._bag_of_words().transform(history.post_tokens)
        return self._history_vectors[key]


def _embed(embed: EmbedFn, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    return np.concatenate([np.asarray(embed(token_lists[i : i + 1024]), np.float32)
                           for i in range(0, len(token_lists), 1024)])


def tune_weights(
    content: TagScorer,
    profiles: AuthorProfiles,
    valid: Sequence[Post],
    grid: dict[str, Sequence[float]] = GRID,
) -> tuple[PersonalizeWeights, dict[PersonalizeWeights, RankingMetrics]]:
    """The grid weights with the best P@1 + R@10 on ``valid`` (never the test posts).

    Content scores and author features are computed once; each grid point is one re-ranking.
    """
    valid = [p for p in valid if p.tags]
    if not valid:
        raise ValueError("no validation post with tags to tune on")
    scorer = PersonalizedScorer(content, profiles, PersonalizeWeights())
    grid = dict(grid)
    if scorer._embed is None:
        grid["similarity"] = (0.0,)
    gold = [np.asarray(content.tags.encode(p.tags), np.int64) for p in valid]
    unknown = [len(p.tags) - len(g) for p, g in zip(valid, gold, strict=True)]
    chunks = []
    for start in range(0, len(valid), 1024):
        chunk = valid[start : start + 1024]
        chunks.append((content.scores(chunk), scorer.features(chunk, all_terms=True),
                       start, len(chunk)))
    results = {}
    for values in itertools.product(*(grid[k] for k in ("count", "similarity", "lexical",
                                                        "popularity"))):
        weights = PersonalizeWeights(*values)
        ranks: list[np.ndarray] = []
        for scores, features, start, n in chunks:
            ranks += gold_ranks(combine(scores, features, weights, scorer.popularity),
                                gold[start : start + n])
        results[weights] = ranking_metrics(ranks, unknown, len(content.tags))
    best = max(results, key=lambda w: (results[w].p_at_1 + results[w].r_at_10,
                                       -sum(w.to_dict().values())))
    return best, results
