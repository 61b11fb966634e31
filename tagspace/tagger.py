"""A trained model with its vocabularies: embeds posts, scores every tag, suggests the top k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tagspace.batch import MAX_TOKENS, make_batch, special_ids
from tagspace.dataset import Post
from tagspace.model import TagSpaceModel
from tagspace.online_vocab import FREE_PREFIX
from tagspace.text import tokenize
from tagspace.vocab import UNK, Vocabulary


@dataclass
class Suggestion:
    tag: str
    score: float


class Tagger:
    """The scorer of a trained #TagSpace or WSABIE model (a ``TagScorer``)."""

    def __init__(self, model: TagSpaceModel, words: Vocabulary, tags: Vocabulary):
        if model.config.n_words != len(words) or model.config.n_tags != len(tags):
            raise ValueError("model and vocabulary sizes differ")
        self.model = model.eval()
        self.words = words
        self.tags = tags
        self.pad_id, self.unk_id = special_ids(words)
        # A plain vocabulary can still hold free rows' placeholders (a snapshot of an online
        # model): they are never tags. An online vocabulary says which rows are in use itself.
        placeholders = [] if tags.active_mask() is not None else \
            [i for i, t in enumerate(tags.tokens) if t.startswith(FREE_PREFIX)]
        self._free_rows = np.asarray(placeholders, np.int64) if placeholders else None

    @property
    def name(self) -> str:
        return "#TagSpace" if self.model.config.encoder == "conv" else "WSABIE"

    def word_ids(self, tokens: Sequence[str]) -> np.ndarray:
        return np.asarray(self.words.encode(tokens[:MAX_TOKENS], self.words.index(UNK)), np.int64)

    def _batch(self, token_lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return make_batch(
            [self.word_ids(t) for t in token_lists], self.model.config, self.pad_id, self.unk_id
        )

    @torch.no_grad()
    def embed_tokens(self, token_lists: Sequence[Sequence[str]]) -> torch.Tensor:
        """(P, d) post embeddings e_conv(w)."""
        return self.model.embed_posts(*self._batch(token_lists))

    def embed_all(self, token_lists: Sequence[Sequence[str]], batch: int = 1024) -> np.ndarray:
        """(P, d) embeddings of any number of posts, computed a batch at a time."""
        parts = [self.embed_tokens(token_lists[i : i + batch]).numpy()
                 for i in range(0, len(token_lists), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.model.config.dim), np.float32)

    @torch.no_grad()
    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        """(P, n_tags): f(w, t) for every post and tag."""
        ids, mask = self._batch([p.tokens for p in posts])
        scores = self.model.score_all(self.model.embed_posts(ids, mask), ids).numpy()
        active = self.tags.active_mask()
        if active is not None:
            scores[:, ~active] = -np.inf  # free rows of an online vocabulary are not tags
        elif self._free_rows is not None:
            scores[:, self._free_rows] = -np.inf
        return scores

    def suggest(self, text: str, k: int = 10) -> list[Suggestion]:
        post = Post("", None, None, tokenize(text), ())
        row = self.scores([post])[0]
        return top_k(row, self.tags, k)


def top_k(row: np.ndarray, tags: Vocabulary, k: int) -> list[Suggestion]:
    """The k best tags of one score row, best first (ties by tag id, as in the metrics)."""
    k = max(0, min(k, len(row)))
    if k == 0:
        return []
    if k < len(row) // 4:  # O(n) selection first: 100k tags, 10 wanted
        threshold = np.partition(row, len(row) - k)[len(row) - k]
        candidates = np.flatnonzero(row >= threshold)  # ties at the threshold all stay
        order = candidates[np.lexsort((candidates, -row[candidates]))][:k]
    else:
        order = np.argsort(-row, kind="stable")[:k]
    return [Suggestion(tags.tokens[i], float(row[i])) for i in order if row[i] > -np.inf]
