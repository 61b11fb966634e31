"""Open-vocabulary hashtags: candidates beyond the tag vocabulary, ranked on one scale with the
known ones.

The paper's model (and StarSpace's, and fastText's) can only name a tag it has a row for, and
on howyoutagtweets 36% of the validation gold tags never occur in training (docs/RESULTS.md).
Many of those are the post's own words or several of them run together (``#thingsilove``), so
this module adds, per post:

- **candidates**: the model's best known tags (``known_k``), the post's words, runs of 2 to
  ``max_concat`` consecutive words joined without spaces (``concat``), and the author's past
  tags (``author``, when a history is given);
- **features** of each candidate: its content score and rank among the known tags (0 where the
  model does not know it), whether and how it appears in the post, how often such a string was
  a hashtag of the training posts it appeared in (``CopyStats``: the copy rate a reader infers
  from "#rupee gain" in a headline), how often it was a tag at all, its length, its character
  trigram similarity to the model's best known tags, and the author's use of it;
- **a scorer** learned on training posts only: gradient-boosted trees (scikit-learn's
  ``HistGradientBoostingClassifier``) predicting "is a gold tag of this post" from those
  features, whose probability is the one scale for known and new candidates.

The paper's model is unchanged underneath: known tags are still scored by it, and with
``sources=("known",)`` the ranking is its own (what the tests check). The scorer must see
content scores that behave as they will at suggestion time, so it is fitted on posts the model
did not train on (``scripts/open_vocab.py`` trains a model on part of the training posts and
fits the scorer on the rest).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier

from tagspace.personalize import AuthorHistory

SOURCES = ("known", "word", "concat", "author")
FEATURES = ("known", "content", "content_gap", "known_rank", "word", "concat", "position",
            "copy_logodds", "log_appear", "log_tag_count", "log_chars", "char_sim",
            "author_log_count")


@dataclass(frozen=True)
class OpenVocabConfig:
    known_k: int = 30  # the model's best known tags taken as candidates
    max_concat: int = 3  # words joined into one candidate, at most
    sources: tuple[str, ...] = SOURCES

    def __post_init__(self) -> None:
        unknown = set(self.sources) - set(SOURCES)
        if unknown or "known" not in self.sources:
            raise ValueError(f"sources must include 'known' and be among {SOURCES}, got "
                             f"{self.sources}")
        if self.known_k < 1 or self.max_concat < 1:
            raise ValueError("known_k and max_concat must be >= 1")


def post_strings(tokens: Sequence[str], max_concat: int) -> dict[str, int]:
    """Candidate strings from a post's tokens -> how many words each joins (1: a word). Only
    word tokens (letters or digits; no placeholders such as ``<url>``, no punctuation) of 2+
    characters alone, any length inside a run."""
    return {s: n for s, (n, _) in _strings_at(tokens, max_concat).items()}


def _strings_at(tokens: Sequence[str], max_concat: int) -> dict[str, tuple[int, float]]:
    """``post_strings`` with where each first starts, 0 (first token) to 1 (last)."""
    words = [t if t.isalnum() else None for t in tokens]
    last = max(len(words) - 1, 1)
    out: dict[str, tuple[int, float]] = {}
    for i, w in enumerate(words):
        if w is None:
            continue
        if len(w) >= 2:
            out.setdefault(w, (1, i / last))
        run = w
        for n in range(2, max_concat + 1):
            nxt = words[i + n - 1] if i + n - 1 < len(words) else None
            if nxt is None:
                break
            run += nxt
            out.setdefault(run, (n, i / last))
    return out


class CopyStats:
    """Per string, from training posts: in how many it appears as a word or a run of words
    (``appear``), in how many of those it is also a hashtag (``copied``), and in how many it is
    a hashtag at all (``tag_count``)."""

    def __init__(self, appear: Counter[str], copied: Counter[str], tag_count: Counter[str]):
        self.appear, self.copied, self.tag_count = appear, copied, tag_count
        total_appear = sum(appear.values())
        self.prior = (sum(copied.values()) + 1.0) / (total_appear + 2.0)

    @classmethod
    def from_posts(cls, posts: Iterable[tuple[Sequence[str], Sequence[str]]],
                   max_concat: int) -> CopyStats:
        """From (tokens, tags) of training posts."""
        appear: Counter[str] = Counter()
        copied: Counter[str] = Counter()
        tag_count: Counter[str] = Counter()
        for tokens, tags in posts:
            strings = post_strings(tokens, max_concat)
            appear.update(strings)
            tag_count.update(set(tags))
            copied.update(t for t in set(tags) if t in strings)
        return cls(appear, copied, tag_count)

    def copy_logodds(self, s: str) -> float:
        """Log-odds that ``s`` is a hashtag of a post it appears in, shrunk to the overall rate
        by one pseudo-post's worth of it."""
        a, c = self.appear[s], self.copied[s]
        p = (c + self.prior) / (a + 1.0)
        return math.log(p / (1.0 - p)) if 0.0 < p < 1.0 else (9.0 if p >= 1.0 else -9.0)


@dataclass
class Candidates:
    """One post's candidates and their features (rows in the order of ``tags``)."""

    tags: list[str]
    features: np.ndarray  # (len(tags), len(FEATURES)) float32


def _trigrams(s: str) -> set[str]:
    s = f"^{s}$"
    return {s[i : i + 3] for i in range(len(s) - 2)}


def candidates(tokens: Sequence[str], known: Sequence[tuple[str, float]], stats: CopyStats,
               config: OpenVocabConfig, history: AuthorHistory | None = None,
               vocabulary: Container[str] = frozenset(),
               score_of: Callable[[str], tuple[float, int] | None] | None = None) -> Candidates:
    """``known``: the model's best known tags with their content scores, best first (at least
    ``config.known_k`` of them where the model knows that many); ``vocabulary``: every tag the
    model knows (a candidate from another source may be one); ``score_of``: the content score
    and rank of any known tag, for candidates of the other sources beyond the best ``known``."""
    src = set(config.sources)
    known = list(known[: config.known_k])
    content = {t: (s, r) for r, (t, s) in enumerate(known)}
    top_score = known[0][1] if known else 0.0
    floor = known[-1][1] if known else 0.0
    at = _strings_at(tokens, config.max_concat)
    tags: dict[str, None] = dict.fromkeys(t for t, _ in known)
    for s, (n, _) in at.items():
        if (n == 1 and "word" in src) or (n > 1 and "concat" in src):
            tags.setdefault(s, None)
    if history is not None and "author" in src:
        for t, _ in history.counts.most_common(config.known_k):
            tags.setdefault(t, None)
    best = [_trigrams(t) for t, _ in known[:5]]
    rows = np.zeros((len(tags), len(FEATURES)), np.float32)
    for i, tag in enumerate(tags):
        n, position = at.get(tag, (0, -1.0))
        score, rank = content.get(tag) or (score_of(tag) if score_of else None) or \
            (floor, config.known_k)
        grams = _trigrams(tag)  # similarity to the best known tags other than itself
        sim = max((len(grams & b) / len(grams | b)
                   for (t, _), b in zip(known[:5], best, strict=False) if t != tag), default=0.0)
        uses = history.counts[tag] if history is not None else 0
        rows[i] = (tag in content or tag in vocabulary, score, top_score - score,
                   math.log1p(rank), n == 1, n if n > 1 else 0, position,
                   stats.copy_logodds(tag),
                   math.log1p(stats.appear[tag]), math.log1p(stats.tag_count[tag]),
                   math.log(len(tag)), sim, math.log1p(uses))
    return Candidates(list(tags), rows)


class TagColumns(Protocol):
    """The tag of each column of a score row, and each tag's column (None: not a column): how
    candidates from the other sources find their content score."""

    def tag(self, column: int) -> str: ...

    def column(self, tag: str) -> int | None: ...

    def __contains__(self, tag: object) -> bool: ...


@dataclass(frozen=True)
class ListedColumns:
    """``TagColumns`` of a list of tags (a model's vocabulary: column i is tag i). Built once
    per tag set (it is O(tags)), not per post."""

    tags: Sequence[str]
    index: Mapping[str, int]

    @classmethod
    def of(cls, tags: Sequence[str]) -> ListedColumns:
        return cls(tags, {t: i for i, t in enumerate(tags)})

    def tag(self, column: int) -> str:
        return self.tags[column]

    def column(self, tag: str) -> int | None:
        return self.index.get(tag)

    def __contains__(self, tag: object) -> bool:
        return tag in self.index


def candidates_for_row(tokens: Sequence[str], row: np.ndarray, columns: TagColumns,
                       stats: CopyStats, config: OpenVocabConfig,
                       history: AuthorHistory | None = None) -> Candidates:
    """``candidates`` of a post from its content scores over ``columns`` (one row of
    ``Tagger.scores``, or of the daemon's compact scores over the tags in use): the best
    ``config.known_k`` (ties by column, as the metrics break them) and, for any other known tag,
    its score and rank in the row. -inf columns (rows that hold no tag) are never known."""
    known = [(columns.tag(i), float(row[i])) for i in best_columns(row, config.known_k)
             if row[i] > -np.inf]

    def score_of(tag: str) -> tuple[float, int] | None:
        i = columns.column(tag)
        return None if i is None else (float(row[i]), int((row > row[i]).sum()))

    return candidates(tokens, known, stats, config, history, columns, score_of)


class OpenVocabScorer:
    """Ranks a post's candidates by the learned probability of being one of its hashtags."""

    def __init__(self, config: OpenVocabConfig, stats: CopyStats,
                 model: HistGradientBoostingClassifier):
        self.config, self.stats, self.model = config, stats, model

    @classmethod
    def fit(cls, examples: Sequence[tuple[Candidates, Sequence[str]]], config: OpenVocabConfig,
            stats: CopyStats, seed: int = 0, learning_rate: float = 0.05) -> OpenVocabScorer:
        """From (candidates, gold tags) of posts the content model did not train on.
        ``learning_rate``: of the boosting; a larger one stops with fewer trees, and each tree
        is a call at prediction time (docs/RESULTS.md measures both)."""
        x = np.concatenate([c.features for c, _ in examples])
        y = np.concatenate([np.isin(c.tags, list(gold)) for c, gold in examples])
        if y.all() or not y.any():
            raise ValueError("the training candidates need hits and misses")
        model = HistGradientBoostingClassifier(max_iter=500, learning_rate=learning_rate,
                                               l2_regularization=1.0, early_stopping=True,
                                               random_state=seed)
        model.fit(x, y)
        return cls(config, stats, model)

    def rank(self, found: Candidates, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` best candidates with their probability, best first (ties: the order in
        which they were found, known tags first)."""
        return self.rank_many([found], [k])[0]

    def rank_many(self, found: Sequence[Candidates], ks: Sequence[int]
                  ) -> list[list[tuple[str, float]]]:
        """``rank`` of each post's candidates, with one prediction call for all of them (the
        trees' per-call cost is most of a small post's)."""
        rows = [c.features for c in found if c.tags]
        p = self.model.predict_proba(np.concatenate(rows))[:, 1] if rows else np.empty(0)
        out, at = [], 0
        for c, k in zip(found, ks, strict=True):
            mine, at = p[at : at + len(c.tags)], at + len(c.tags)
            order = np.argsort(-mine, kind="stable")[:k]
            out.append([(c.tags[i], float(mine[i])) for i in order])
        return out


SCORERS_FORMAT = 1
# what the trees of a fitted scorer hold beyond plain data: skops loads nothing else
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def save_scorers(folder: Path, scorers: Mapping[str, OpenVocabScorer]) -> None:
    """Fitted scorers by mode (``content``, ``personalized``) into ``folder``, for the daemon:
    ``scorers.json`` (format, each mode's config), ``stats.json`` (the copy statistics they
    share) and ``<mode>.skops`` (the trees, in skops' format: loading runs no pickle)."""
    stats = {id(s.stats): s.stats for s in scorers.values()}
    if len(stats) != 1:
        raise ValueError("the scorers of one folder share their copy statistics")
    (shared,) = stats.values()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stats.json").write_bytes(orjson.dumps(
        {"appear": shared.appear, "copied": shared.copied, "tag_count": shared.tag_count}))
    for mode, scorer in scorers.items():
        skops.io.dump(scorer.model, folder / f"{mode}.skops")
    index = {"format": SCORERS_FORMAT, "modes": {
        mode: {"known_k": s.config.known_k, "max_concat": s.config.max_concat,
               "sources": list(s.config.sources)} for mode, s in scorers.items()}}
    (folder / "scorers.json").write_text(json.dumps(index, indent=2) + "\n")


def load_scorers(folder: Path) -> dict[str, OpenVocabScorer]:
    """What ``save_scorers`` wrote; ValueError when ``folder`` is not such a folder."""
    try:
        index = json.loads((folder / "scorers.json").read_text())
        if index.get("format") != SCORERS_FORMAT:
            raise ValueError(f"format {index.get('format')!r}, not {SCORERS_FORMAT}")
        raw = orjson.loads((folder / "stats.json").read_bytes())
        stats = CopyStats(*(Counter(raw[k]) for k in ("appear", "copied", "tag_count")))
        return {mode: OpenVocabScorer(
                    OpenVocabConfig(c["known_k"], c["max_concat"], tuple(c["sources"])), stats,
                    skops.io.load(folder / f"{mode}.skops", trusted=TRUSTED_TYPES))
                for mode, c in index["modes"].items()}
    except (OSError, KeyError, TypeError, ValueError) as e:  # untrusted types: TypeError
        raise ValueError(f"{folder} is not a folder of open-vocabulary scorers "
                         f"(scripts/open_vocab.py --save): {e}") from e


@dataclass(frozen=True)
class OpenMetrics:
    """P@1 and R@10 over ranked tag strings, the contract's definitions with every gold tag a
    possible hit; ``_known``: gold restricted to the tags of the training vocabulary."""

    p_at_1: float
    r_at_10: float
    p_at_1_known: float
    r_at_10_known: float
    n_posts: int
    n_gold_tags: int


def open_metrics(rankings: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                 vocabulary: set[str] | frozenset[str]) -> OpenMetrics:
    if len(rankings) != len(gold) or not gold:
        raise ValueError("one ranking per post with gold tags, at least one")
    hits1 = hits10 = n_gold = 0
    hits1_k = hits10_k = n_gold_k = posts_k = 0
    for ranked, tags in zip(rankings, gold, strict=True):
        g = set(tags)
        top10 = set(ranked[:10])
        hit1 = bool(ranked) and ranked[0] in g
        hits1 += hit1
        hits10 += len(g & top10)
        n_gold += len(g)
        known = g & vocabulary
        if known:
            posts_k += 1
            hits1_k += bool(ranked) and ranked[0] in known
            hits10_k += len(known & top10)
            n_gold_k += len(known)
    return OpenMetrics(hits1 / len(gold), hits10 / max(n_gold, 1), hits1_k / max(posts_k, 1),
                       hits10_k / max(n_gold_k, 1), len(gold), n_gold)


def best_columns(row: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best columns of a score row, best first (ties by column, as the metrics break
    them): an O(N) selection, then a sort of the k."""
    k = min(k, len(row))
    if k < 1:
        return np.zeros(0, np.int64)
    part = np.argpartition(-row, k - 1)[:k]
    return part[np.lexsort((part, -row[part]))]


def known_top(scores: np.ndarray, tags: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row of (P, N) content scores, the ``k`` best tags and scores, best first (ties by
    tag id, as the metrics break them)."""
    return [[(tags[i], float(row[i])) for i in best_columns(row, k)] for row in scores]
