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
author terms are zero, and the popularity term is added for every post alike).

``Personalizer`` is the one implementation: ``evaluate --personalize`` (``PersonalizedScorer``,
histories from files) and the daemon (histories from Redis) both rank through it, with the
weights and the IDF stored beside the model (``save_personalization``). Tags that are not in use
(the free rows of an online vocabulary, scored -inf) take no part in the z-scores.

Offline, ``Personalizer.scores`` works on the full (P, n_tags) score matrix; the daemon calls
``Personalizer.scores_active`` on the compact scores of the tags in use (``Tagger.score_active``):
the same terms over the same tags, the z-scores over the same finite scores, so the same
ranking, without any per-request work in proportion to the tag table's capacity.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sps

from tagspace.bow import IDF_FILE, BagOfWords
from tagspace.dataset import Post
from tagspace.evaluate import TagScorer
from tagspace.metrics import RankingMetrics, gold_ranks, ranking_metrics
from tagspace.recommend import unit_rows
from tagspace.tagger import ActiveScores
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


# For a model saved without tuned weights: the region `train --valid` chose on howyoutagtweets
# and cooking (docs/MODEL.md).
DEFAULT_WEIGHTS = PersonalizeWeights(count=6.0, lexical=8.0, popularity=0.5)


@dataclass
class AuthorHistory:
    """One author's past: tag counts, and the tags and tokens of each recent past post."""

    counts: Counter[str] = field(default_factory=Counter)
    post_tags: list[tuple[str, ...]] = field(default_factory=list)
    post_tokens: list[tuple[str, ...]] = field(default_factory=list)

    @classmethod
    def of_posts(cls, posts: Iterable[tuple[Sequence[str], Sequence[str]]]) -> AuthorHistory:
        """From (tags, tokens) of past posts, oldest first."""
        history = cls()
        for tags, tokens in posts:
            history.add(tags, tokens)
        return history

    def add(self, tags: Sequence[str], tokens: Sequence[str] = ()) -> None:
        """Append a post; past ``MAX_HISTORY_POSTS`` the oldest leaves, counts included."""
        self.counts.update(tags)
        self.post_tags.append(tuple(tags))
        self.post_tokens.append(tuple(tokens))
        if len(self.post_tags) > MAX_HISTORY_POSTS:
            self.counts.subtract(self.post_tags.pop(0))
            self.post_tokens.pop(0)
            self.counts = +self.counts  # drop tags now at zero


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


@dataclass(frozen=True)
class Entries:
    """The nonzero entries of a sparse (P, N) matrix: one (row, col, value) per (post, tag)."""

    row: np.ndarray  # int64
    col: np.ndarray  # int64
    value: np.ndarray  # float32

    @classmethod
    def of(cls, part: tuple[list[int], list[int], list[float]]) -> Entries:
        return cls(np.asarray(part[0], np.int64), np.asarray(part[1], np.int64),
                   np.asarray(part[2], np.float32))

    def dense(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[self.row, self.col] = self.value
        return out


@dataclass(frozen=True)
class HistoryFeatures:
    """Per (post, tag) author features of a (P, N) score matrix, sparse: nonzero only on the
    author's tags (a few dozen entries a post, so plain arrays, no sparse-matrix machinery)."""

    shape: tuple[int, int]
    count: Entries
    similarity: Entries
    lexical: Entries

    def select(self, rows: np.ndarray) -> HistoryFeatures:
        """The features of the tags ``rows`` (ascending ids) only: column j is tag ``rows[j]``
        (the compact columns of ``Tagger.score_active``)."""
        out = {}
        for name in ("count", "similarity", "lexical"):
            e: Entries = getattr(self, name)
            at = np.searchsorted(rows, e.col).clip(max=max(len(rows) - 1, 0))
            keep = rows[at] == e.col if len(rows) else np.zeros(len(e.col), bool)
            out[name] = Entries(e.row[keep], at[keep], e.value[keep])
        return HistoryFeatures((self.shape[0], len(rows)), **out)


def history_features(
    tags: Vocabulary,
    histories: Sequence[AuthorHistory | None],
    model_sims: Sequence[np.ndarray | None] | None = None,
    lexical_sims: Sequence[np.ndarray | None] | None = None,
) -> HistoryFeatures:
    """``*_sims[i]``: cosine of post i to each of its author's past posts (aligned with
    ``history.post_tags``), or None; a tag's feature is the max over the posts that carry it."""
    parts: dict[str, tuple[list[int], list[int], list[float]]] = {
        k: ([], [], []) for k in ("count", "similarity", "lexical")}
    for row, history in enumerate(histories):
        if not history:
            continue
        counts = {i: _log1p_count(n) for tag, n in history.counts.items()
                  if (i := tags.get(tag)) is not None}
        _extend(parts["count"], row, counts)
        post_rows: list[list[int]] | None = None  # each past post's tag ids, looked up once
        for name, sims in (("similarity", model_sims), ("lexical", lexical_sims)):
            if sims is None or sims[row] is None:
                continue
            if post_rows is None:
                post_rows = [[i for i in map(tags.get, post_tags) if i is not None]
                             for post_tags in history.post_tags]
            best: dict[int, float] = {}
            row_sims = sims[row]
            assert row_sims is not None and len(row_sims) == len(post_rows)
            for sim, ids in zip(np.asarray(row_sims).tolist(), post_rows, strict=True):
                for i in ids:
                    if sim > best.get(i, 0.0):
                        best[i] = sim
            _extend(parts[name], row, best)
    return HistoryFeatures((len(histories), len(tags)),
                           **{k: Entries.of(v) for k, v in parts.items()})


@functools.lru_cache(maxsize=4096)
def _log1p_count(n: int) -> float:
    """log(1 + n) of a tag count, memoised: numpy's scalar call costs ~0.6 us a tag."""
    return float(np.log1p(n))


def _extend(part: tuple[list[int], list[int], list[float]], row: int,
            values: dict[int, float]) -> None:
    part[0].extend([row] * len(values))
    part[1].extend(values)
    part[2].extend(values.values())


def combine(
    content: np.ndarray, features: HistoryFeatures, weights: PersonalizeWeights,
    popularity: np.ndarray,
) -> np.ndarray:
    """z(content) + the weighted author features + g * popularity, all (P, N).

    Columns scored -inf (rows that hold no tag) stay -inf and are left out of the z-scores."""
    finite = np.isfinite(content)
    if finite.all():
        mean = content.mean(axis=1, keepdims=True)
        std = content.std(axis=1, keepdims=True)
    else:
        n = np.maximum(finite.sum(axis=1, keepdims=True), 1)
        safe = np.where(finite, content, 0.0)
        mean = safe.sum(axis=1, keepdims=True) / n
        std = np.sqrt((np.where(finite, safe - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / n)
    out = ((content - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    for name in ("count", "similarity", "lexical"):
        w = getattr(weights, name)
        if w:
            e = getattr(features, name)  # one entry per (post, tag): no two add to one cell
            out[e.row, e.col] += w * e.value
    if weights.popularity:
        out += weights.popularity * popularity[None, :]
    return out


def tag_popularity(tags: Vocabulary, rows: np.ndarray | None = None) -> np.ndarray:
    """log(1 + count(t)) for every row of ``tags`` (0 for rows that hold no tag), or for the
    rows ``rows`` only."""
    if rows is None:
        return np.log1p(np.asarray(tags.counts, np.float32))
    # An online vocabulary keeps its live counts as an array too: a gather of the N rows, not
    # a conversion of the whole table's list per request.
    counts = getattr(tags, "_count_arr", None)
    picked = counts[rows] if counts is not None else np.asarray(tags.counts)[rows]
    return np.log1p(picked.astype(np.float32))


class Personalizer:
    """The personalized ranking of ``tagspace.personalize``, for any content scorer.

    ``bow`` is the TF-IDF space of the lexical term (None: that term is off). Unit vectors of an
    author's past posts are cached under the caller's key (an author id offline; the author,
    the model's weights and the history's newest post in the daemon), at most ``cache_size``.
    """

    def __init__(self, weights: PersonalizeWeights, bow: BagOfWords | None,
                 cache_size: int = 10_000, max_age_s: float | None = None):
        """``max_age_s``: the model vectors of a cached past are computed again once older
        (a model trained online moves under a fixed key); None: kept while the key holds."""
        self.weights = weights
        self.bow = bow
        self.cache_size = cache_size
        self.max_age_s = max_age_s
        # (kind, key) -> (vectors, monotonic time they were computed)
        self._past_vectors: OrderedDict[tuple[str, Hashable], tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def scores(self, content: TagScorer, content_scores: np.ndarray,
               token_lists: Sequence[Sequence[str]],
               histories: Sequence[AuthorHistory | None],
               keys: Sequence[Hashable]) -> np.ndarray:
        """(P, N): ``content_scores`` (from ``content``) re-ranked by each post's author."""
        features = self.features(content, token_lists, histories, keys)
        popularity = tag_popularity(content.tags) if self.weights.popularity else \
            np.zeros(0, np.float32)
        return combine(content_scores, features, self.weights, popularity)

    def scores_active(self, content: TagScorer, active: ActiveScores,
                      token_lists: Sequence[Sequence[str]],
                      histories: Sequence[AuthorHistory | None],
                      keys: Sequence[Hashable]) -> np.ndarray:
        """(P, N): ``scores`` on the compact scores of the tags in use (``active``, from
        ``content.score_active``): column j is tag ``active.tags.rows[j]``. The posts'
        embeddings come with them, so the query is not encoded again."""
        rows = active.tags.rows
        features = self.features(content, token_lists, histories, keys,
                                 embeddings=active.embeddings).select(rows)
        popularity = tag_popularity(content.tags, rows) if self.weights.popularity else \
            np.zeros(0, np.float32)
        return combine(active.scores, features, self.weights, popularity)

    def features(self, content: TagScorer, token_lists: Sequence[Sequence[str]],
                 histories: Sequence[AuthorHistory | None], keys: Sequence[Hashable],
                 all_terms: bool = False,
                 embeddings: np.ndarray | None = None) -> HistoryFeatures:
        """The author features; ``all_terms``: every term, even those weighted 0 (tuning);
        ``embeddings``: the posts' (P, d) model embeddings when the caller has them."""
        model_sims = lexical_sims = None
        embed: EmbedFn | None = getattr(content, "embed_tokens", None)
        if embed is not None and (all_terms or self.weights.similarity) and any(histories):
            query = unit_rows(_embed(embed, token_lists) if embeddings is None else embeddings)
            model_sims = [None if h is None else self._past("model", key, h, embed) @ query[i]
                          for i, (h, key) in enumerate(zip(histories, keys, strict=True))]
        if self.bow is not None and (all_terms or self.weights.lexical) and any(histories):
            lexical_sims = [
                None if h is None
                else _lexical_sims(self.bow, token_lists[i], self._past("bow", key, h, embed))
                for i, (h, key) in enumerate(zip(histories, keys, strict=True))]
        return history_features(content.tags, histories, model_sims, lexical_sims)

    def _past(self, kind: str, key: Hashable, history: AuthorHistory,
              embed: EmbedFn | None) -> Any:
        """Unit vectors of the author's past posts (dense for the model, sparse TF-IDF)."""
        cache_key = (kind, key)
        now = time.monotonic()
        with self._lock:  # the daemon's request threads share the cache
            cached = self._past_vectors.get(cache_key)
            if cached is not None and (kind != "model" or self.max_age_s is None
                                       or now - cached[1] < self.max_age_s):
                self._past_vectors.move_to_end(cache_key)
                return cached[0]
        if kind == "model":  # computed outside the lock: two threads may both compute it
            assert embed is not None
            vectors = unit_rows(_embed(embed, history.post_tokens))
        else:
            assert self.bow is not None
            vectors = tfidf_rows(self.bow, history.post_tokens)
        with self._lock:
            self._past_vectors[cache_key] = (vectors, now)
            self._past_vectors.move_to_end(cache_key)
            if len(self._past_vectors) > self.cache_size:
                self._past_vectors.popitem(last=False)
        return vectors


class PersonalizedScorer:
    """A ``TagScorer`` that adds the author's history (``profiles``) to another scorer's
    content scores. ``bow``: the model's stored IDF; by default one fitted on every history
    post (for models saved without one)."""

    def __init__(self, content: TagScorer, profiles: AuthorProfiles, weights: PersonalizeWeights,
                 bow: BagOfWords | None = None):
        self.content = content
        self.tags = content.tags
        self.profiles = profiles
        if bow is None:
            bow = BagOfWords([t for h in profiles.histories.values() for t in h.post_tokens])
        self.personalizer = Personalizer(weights, bow, cache_size=len(profiles) + 1)

    @property
    def name(self) -> str:
        return f"{getattr(self.content, 'name', 'model')} + author"

    @property
    def weights(self) -> PersonalizeWeights:
        return self.personalizer.weights

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        return self.personalizer.scores(self.content, self.content.scores(posts),
                                        [p.tokens for p in posts], self._histories(posts),
                                        [p.user_id for p in posts])

    def features(self, posts: Sequence[Post], all_terms: bool = False) -> HistoryFeatures:
        return self.personalizer.features(self.content, [p.tokens for p in posts],
                                          self._histories(posts), [p.user_id for p in posts],
                                          all_terms)

    def _histories(self, posts: Sequence[Post]) -> list[AuthorHistory | None]:
        return [self.profiles.get(p.user_id) for p in posts]


def tfidf_row(bow: BagOfWords, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One post's unit TF-IDF vector as (term ids ascending, weights): ``bow.transform``'s row
    bit for bit (``_tfidf_arrays``)."""
    data, ids, _ = _tfidf_arrays(bow, [tokens])
    return ids, data


def tfidf_rows(bow: BagOfWords, token_lists: Sequence[Sequence[str]]) -> sps.csr_matrix:
    """``bow.transform(token_lists)`` bit for bit (``_tfidf_arrays``): an author's past posts
    on a cache miss, where scikit-learn's per-call machinery cost more than the arithmetic
    (py-spy at 100 + 100 requests/s: 0.35 ms of a personalized suggestion)."""
    data, ids, indptr = _tfidf_arrays(bow, token_lists)
    return sps.csr_matrix((data, ids, indptr), shape=(len(token_lists), len(bow.vectorizer.idf_)))


def _tfidf_arrays(bow: BagOfWords, token_lists: Sequence[Sequence[str]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, indices, indptr) of the posts' unit TF-IDF rows: scikit-learn's steps in its
    order (counts, term ids ascending, log(tf) + 1, x idf, then each row's L2 norm summed left
    to right as its Cython does), without its per-call validation (~0.2 ms a call)."""
    vocabulary, idf = bow.vectorizer.vocabulary_, bow.vectorizer.idf_
    ids: list[int] = []
    counts: list[int] = []
    indptr = [0]
    for tokens in token_lists:
        row: dict[int, int] = {}
        for token in tokens:
            j = vocabulary.get(token)
            if j is not None:
                row[j] = row.get(j, 0) + 1
        for j in sorted(row):
            ids.append(j)
            counts.append(row[j])
        indptr.append(len(ids))
    id_array = np.asarray(ids, np.int64)
    data = np.asarray(counts, np.float64)
    np.log(data, out=data)
    data += 1.0
    data *= idf[id_array]
    squares = (data * data).tolist()
    for start, end in itertools.pairwise(indptr):
        total = 0.0
        for x in squares[start:end]:
            total += x
        if total != 0.0:
            data[start:end] /= math.sqrt(total)
    return data, id_array, np.asarray(indptr, np.int64)


def _lexical_sims(bow: BagOfWords, tokens: Sequence[str], past: Any) -> np.ndarray:
    """Cosine of a post's TF-IDF vector to each past post's (``past``: their unit rows, CSR).
    A CSR-by-dense product sums each row's products in the row's order, as the sparse product
    of ``past @ query.T`` does, so the values are the same bits; the dense query spans the IDF
    vocabulary (fixed when the model was trained), not the tag table."""
    ids, weights = tfidf_row(bow, tokens)
    query = np.zeros(past.shape[1], np.float64)
    query[ids] = weights
    return np.asarray(past @ query, np.float64)


def _embed(embed: EmbedFn, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    return np.concatenate([np.asarray(embed(token_lists[i : i + 1024]), np.float32)
                           for i in range(0, len(token_lists), 1024)])


def save_personalization(model_dir: Path, bow: BagOfWords) -> None:
    """Store the IDF beside a model (its weights live in the checkpoint's ``extra``)."""
    bow.save(Path(model_dir) / IDF_FILE)


def load_personalization(model_dir: Path, extra: dict[str, Any],
                         default: PersonalizeWeights) -> tuple[PersonalizeWeights,
                                                               BagOfWords | None]:
    """The tuned weights (``default`` when the model has none) and the stored IDF (None when
    the model was saved without one)."""
    weights = PersonalizeWeights(**extra["personalize"]) if "personalize" in extra else default
    path = Path(model_dir) / IDF_FILE
    return weights, BagOfWords.load(path) if path.is_file() else None


def tune_weights(
    content: TagScorer,
    profiles: AuthorProfiles,
    valid: Sequence[Post],
    grid: Mapping[str, Sequence[float]] = GRID,
    bow: BagOfWords | None = None,
) -> tuple[PersonalizeWeights, dict[PersonalizeWeights, RankingMetrics]]:
    """The grid weights with the best P@1 + R@10 on ``valid`` (never the test posts), with
    ``bow`` as the lexical term's IDF (default: fitted on the profiles, as ``PersonalizedScorer``).

    Content scores and author features are computed once; each grid point is one re-ranking.
    """
    valid = [p for p in valid if p.tags]
    if not valid:
        raise ValueError("no validation post with tags to tune on")
    scorer = PersonalizedScorer(content, profiles, PersonalizeWeights(), bow)
    grid = dict(grid)
    if getattr(content, "embed_tokens", None) is None:
        grid["similarity"] = (0.0,)
    popularity = tag_popularity(content.tags)
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
            ranks += gold_ranks(combine(scores, features, weights, popularity),
                                gold[start : start + n])
        results[weights] = ranking_metrics(ranks, unknown, len(content.tags))
    best = max(results, key=lambda w: (results[w].p_at_1 + results[w].r_at_10,
                                       -sum(w.to_dict().values())))
    return best, results
