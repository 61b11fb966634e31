"""Real-time hashtag suggestions.

Suggestions rank every tag the live model knows; when the request names the author, their
newest tagged posts in Redis personalize the ranking through the library's ``Personalizer``
(the same terms, weights and IDF as ``tagspace evaluate --personalize``: z-scored content score,
the author's tag counts, max model and TF-IDF cosine to their past posts with the tag, tag
popularity). An author with no tagged post gets the content ranking. Feeds are ``daemon.feed``.

Per request the work is over the tags in use only (``Tagger.score_active``: N of the table's
capacity rows, read live, since Hogwild threads update the tag vectors in place) and the top k
is an O(N) selection on that compact row. Requests that arrive together are scored together
(``suggest_many``, from ``daemon.batching``): one encode, one product with the tag table, one
Redis round trip for their authors. The rows in use are cached per vocabulary generation
by the tagger; a reloaded model version comes with a new tagger, so with a new cache.

Scores stay fp32 (measured with ``scripts/bench_suggest.py`` on this 2-core AVX512-BF16 EPYC,
no AMX): bf16 tag scores are no faster at 16-19k rows, and faster at 100k only from a copy of
the table, which Hogwild would leave stale; a bf16 encoder is ~10% faster (0.03 ms) but changes
the top 10 of one post in five against fp32 (howyoutagtweets model), so the served ranking would
no longer be the one ``tagspace evaluate --personalize`` measures.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.model_hub import ServedModel
from daemon.open_vocab import ActiveColumns, OpenVocabRanking
from daemon.store import Store
from tagspace.personalize import AuthorHistory
from tagspace.tagger import top_k
from tagspace.text import parse_post_text

Suggested = tuple[str, float, bool]  # tag, score, whether the model has a row for it


class Scorer:
    def __init__(self, hub: ServedModel, store: Store,
                 open_vocab: OpenVocabRanking | None = None):
        """``open_vocab``: also suggest tags the model has never seen (``daemon.open_vocab``);
        None: the model's ranking of its known tags."""
        self.hub, self.store, self.open_vocab = hub, store, open_vocab

    def suggest(self, text: str, k: int, user_id: str | None) -> list[Suggested]:
        return self.suggest_many([(text, k, user_id)])[0]

    def suggest_many(self, requests: Sequence[tuple[str, int, str | None]]
                     ) -> list[list[Suggested]]:
        """``suggest`` of each (text, k, user_id), together: one encode of all the posts, one
        product with the tag table, one Redis round trip for the authors. Each answer is the
        one ``suggest`` gives alone (row i depends on request i only)."""
        tagger, personalizer = self.hub.tagger, self.hub.personalizer
        tokens = [parse_post_text(text).tokens for text, _, _ in requests]
        active = tagger.score_active(tokens)
        scores = active.scores
        pasts = self.store.authored_many([user_id for _, _, user_id in requests])
        with_past = [i for i, past in enumerate(pasts) if past]
        histories = [AuthorHistory.of_posts((tags, words) for _, tags, words in pasts[i])
                     for i in with_past]
        if with_past:
            scores = scores.copy()  # rows without an author's past keep the content ranking
            # the model's vectors of a history: reusable until the weights are replaced or
            # the history moves (and HISTORY_VECTORS_MAX_AGE_S at most while training)
            keys = [(requests[i][2], self.hub.weights_id, len(pasts[i]), pasts[i][-1][0])
                    for i in with_past]
            scores[with_past] = personalizer.scores_active(
                tagger, active.take(with_past), [tokens[i] for i in with_past], histories, keys)
        ks = [k for _, k, _ in requests]
        if self.open_vocab is not None:
            return self.open_vocab.rank(tokens, scores, ActiveColumns(tagger.tags, active.tags),
                                        dict(zip(with_past, histories, strict=True)), ks)
        return [[(s.tag, s.score, True) for s in top_k(scores[i], tagger.tags, k,
                                                        active.tags.rows)]
                for i, k in enumerate(ks)]
