"""Open-vocabulary suggestions in the daemon: never-seen hashtags among the known ones.

With ``open_vocab_scorers`` set (a folder of ``scripts/open_vocab.py --save``), a suggestion's
candidates are the model's best known tags, the post's words and runs of words, and the
author's past tags, ranked by the learned probability of being one of the post's hashtags
(``tagspace.open_vocab``, docs/MODEL.md): the same candidates, features and trees as the offline
evaluation, on the daemon's live scores. Requests with an author's past use the scorer fitted
on personalized scores (their rows are the ``Personalizer``'s), the others the content one.

What is frozen: the trees and the copy statistics (how often a string of a post was one of its
hashtags) are the training data's, saved with the scorers; the known tags, their scores and
the author's past are live. A tag the stream brings is known from its first post on
(``tag_first_sight``), so it is scored by the model like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from tagspace.open_vocab import OpenVocabScorer, candidates_for_row, load_scorers
from tagspace.personalize import AuthorHistory
from tagspace.tagger import ActiveTags
from tagspace.vocab import Vocabulary

MODES = ("content", "personalized")


class ActiveColumns:
    """``TagColumns`` of the compact score rows over the tags in use, read through the
    vocabulary: nothing O(tags) is built when an admission moves the rows in use."""

    def __init__(self, tags: Vocabulary, active: ActiveTags):
        self.tags, self.active = tags, active

    def tag(self, column: int) -> str:
        return self.tags.tokens[int(self.active.rows[column])]

    def column(self, tag: str) -> int | None:
        row = self.tags.get(tag)
        if row is None:
            return None
        at = int(self.active.positions(np.array([row]))[0])
        return at if at >= 0 else None

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, str) and self.column(tag) is not None


class OpenVocabRanking:
    """Rankings of known and never-seen tags for requests scored together."""

    def __init__(self, scorers: Mapping[str, OpenVocabScorer]):
        if "content" not in scorers or set(scorers) - set(MODES):
            raise ValueError(f"open-vocabulary scorers by mode, 'content' at least, of "
                             f"{MODES}; got {sorted(scorers)}")
        self.scorers = dict(scorers)

    @classmethod
    def load(cls, path: Path) -> OpenVocabRanking:
        ranking = cls(load_scorers(path))
        # the trees predict with OpenMP threads, and their runtime was loaded just now: one
        # thread, as for everything else on the serving path
        threadpool_limits(1, user_api="openmp")
        return ranking

    def rank(self, tokens: Sequence[Sequence[str]], scores: np.ndarray, columns: ActiveColumns,
             histories: Mapping[int, AuthorHistory], ks: Sequence[int]
             ) -> list[list[tuple[str, float, bool]]]:
        """Per request i: its ``ks[i]`` best candidates as (tag, probability, known), from its
        score row ``scores[i]`` (personalized where ``histories`` has its author's past)."""
        by_mode: dict[str, list[int]] = {}
        found = []
        for i, row in enumerate(scores):
            history = histories.get(i)
            mode = "personalized" if history is not None and "personalized" in self.scorers \
                else "content"
            scorer = self.scorers[mode]
            found.append(candidates_for_row(tokens[i], row, columns, scorer.stats,
                                            scorer.config, history))
            by_mode.setdefault(mode, []).append(i)
        out: list[list[tuple[str, float, bool]]] = [[] for _ in found]
        for mode, rows in by_mode.items():
            ranked = self.scorers[mode].rank_many([found[i] for i in rows], [ks[i] for i in rows])
            for i, tags in zip(rows, ranked, strict=True):
                out[i] = [(t, p, t in columns) for t, p in tags]
        return out
