"""The paper's non-CNN baselines (section 4.2): Frequency, #words and Word2Vec.

WSABIE is the ``bag`` encoder of ``tagspace.model``, trained with the same WARP/Hogwild code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from tagspace.dataset import Post
from tagspace.vocab import Vocabulary

log = logging.getLogger(__name__)


class FrequencyScorer:
    """Ignores the text: every post gets tags ranked by training frequency."""

    name = "Frequency"

    def __init__(self, tags: Vocabulary):
        self.tags = tags
        self._log_freq = np.log1p(np.asarray(tags.counts, np.float64))

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        return np.broadcast_to(self._log_freq, (len(posts), len(self.tags))).copy()


class WordsScorer(FrequencyScorer):
    """#words: frequency order, plus a bonus larger than any frequency for tags that are words
    of the post ("crazy commute this am" ranks #crazy, #commute, #this, #am first)."""

    name = "#words"

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        out = super().scores(posts)
        bonus = float(self._log_freq.max()) + 1.0
        for row, post in zip(out, posts, strict=True):
            ids = self.tags.encode(post.tokens)
            row[ids] += bonus
        return out


class Word2VecScorer:
    """Unsupervised word2vec (gensim) trained on the posts with hashtags as words; a post is the
    sum of its word vectors, and tags rank by cosine similarity to it (paper section 4.2)."""

    name = "Word2Vec"
    TAG_PREFIX = "#"  # a hashtag is its own token, distinct from the same plain word

    def __init__(
        self, posts: Sequence[Post], tags: Vocabulary, dim: int, epochs: int = 60, seed: int = 0,
        workers: int | None = None,
    ):
        from gensim.models import Word2Vec

        self.tags = tags
        sentences = [list(p.tokens) + [self.TAG_PREFIX + t for t in p.tags] for p in posts]
        window = max(len(s) for s in sentences)  # a post is one context: tags see every word
        self.w2v = Word2Vec(
            sentences, vector_size=dim, window=window, min_count=1, sg=0, negative=5,
            epochs=epochs, seed=seed, workers=workers or os.cpu_count() or 1,
        )
        vectors = self.w2v.wv
        self._tag_matrix = np.zeros((len(tags), dim), np.float32)
        for i, tag in enumerate(tags.tokens):
            key = self.TAG_PREFIX + tag
            if key in vectors:
                self._tag_matrix[i] = vectors[key]
        self._tag_matrix /= np.linalg.norm(self._tag_matrix, axis=1, keepdims=True).clip(1e-8)

    def embed(self, tokens: Sequence[str]) -> np.ndarray:
        vectors = self.w2v.wv
        known = [t for t in tokens if t in vectors]
        if not known:
            return np.zeros(self.w2v.vector_size, np.float32)
        return np.sum([vectors[t] for t in known], axis=0)

    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        emb = np.stack([self.embed(p.tokens) for p in posts])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-8)
        return emb @ self._tag_matrix.T
