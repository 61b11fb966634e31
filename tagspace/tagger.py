"""A trained model with its vocabularies: embeds posts, scores every tag, suggests the top k.

Two ways to score. ``Tagger.scores`` is the offline one: a (P, n_tags) matrix over every row of
the tag table, -inf on rows that hold no tag. ``Tagger.score_active`` is the serving one: only
the rows in use (``ActiveTags``: 19k of a 100k-row online table), as a compact (P, N) matrix,
with nothing allocated per call in proportion to the table's capacity. Both compute the same
fp32 dot products f(w, t) = e_conv(w) . e_lt(t) (+ the word-tag bonus).

The set of rows in use changes online (``OnlineVocabulary``: admissions fill free rows or reuse
evicted ones, and each bumps the vocabulary's ``generation``), so ``ActiveTags`` is cached per
generation and rebuilt only after one. The tag *vectors* are never copied: Hogwild threads update
them in place, so each call reads the live rows, as a view of the table when the rows in use are
its first N rows (the usual case: free rows are taken lowest first) and through the row index
otherwise. That is O(N d) per call, as the dot products themselves are.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tagspace.batch import EMBED_BATCH, MAX_TOKENS, length_groups, make_batch, special_ids
from tagspace.dataset import Post
from tagspace.model import TagSpaceModel
from tagspace.online_vocab import FREE_PREFIX
from tagspace.text import tokenize
from tagspace.vocab import UNK, Vocabulary


@dataclass
class Suggestion:
    tag: str
    score: float


@dataclass(frozen=True)
class ActiveTags:
    """The rows of a tag table that hold a tag, ascending, at one vocabulary ``key``."""

    rows: np.ndarray  # (N,) int64, ascending
    key: Hashable  # the vocabulary's generation when ``rows`` was read

    @property
    def span(self) -> int:
        """Rows [0, span) of the table contain every row in use."""
        return int(self.rows[-1]) + 1 if len(self.rows) else 0

    @property
    def prefix(self) -> bool:
        """The rows in use are exactly the table's first N rows."""
        return self.span == len(self.rows)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """The compact position of each of ``rows``, -1 for a row not in use."""
        rows = np.asarray(rows, np.int64)
        if self.prefix:
            return np.where((rows >= 0) & (rows < len(self.rows)), rows, -1)
        at = np.searchsorted(self.rows, rows).clip(max=len(self.rows) - 1)
        return np.where(self.rows[at] == rows, at, -1)


@dataclass(frozen=True)
class ActiveScores:
    """``Tagger.score_active``: the scores of the tags in use, and the posts' embeddings."""

    tags: ActiveTags
    scores: np.ndarray  # (P, N) f(w, t) for t = tags.rows
    embeddings: np.ndarray  # (P, d) e_conv(w), for the personalization's similarity term

    def take(self, posts: Sequence[int]) -> ActiveScores:
        """The same for some of the posts only (rows ``posts``, in that order)."""
        return ActiveScores(self.tags, self.scores[posts], self.embeddings[posts])


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
        self._active: ActiveTags | None = None

    @property
    def name(self) -> str:
        return "#TagSpace" if self.model.config.encoder == "conv" else "WSABIE"

    def word_ids(self, tokens: Sequence[str]) -> np.ndarray:
        return np.asarray(self.words.encode(tokens[:MAX_TOKENS], self.words.index(UNK)), np.int64)

    def _batch(self, token_lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return make_batch(
            [self.word_ids(t) for t in token_lists], self.model.config, self.pad_id, self.unk_id
        )

    def embed_tokens(self, token_lists: Sequence[Sequence[str]]) -> torch.Tensor:
        """(P, d) post embeddings e_conv(w)."""
        return torch.from_numpy(self.embed_all(token_lists))

    def embed_all(self, token_lists: Sequence[Sequence[str]], batch: int = EMBED_BATCH,
                  bf16: bool = False) -> np.ndarray:
        """(P, d) embeddings of any number of posts (``embed_ids``)."""
        return self.embed_ids([self.word_ids(t) for t in token_lists], batch, bf16)

    @torch.no_grad()
    def embed_ids(self, ids: Sequence[np.ndarray], batch: int = EMBED_BATCH,
                  bf16: bool = False) -> np.ndarray:
        """(P, d) embeddings of posts given as word ids, a batch of similar lengths at a time
        (``length_groups``; a post's embedding does not depend on its batch beyond float
        rounding). ``bf16``: the encoder under bfloat16 autocast, for CPUs with bf16 units
        (cosine >= 0.999 to fp32 is checked by ``scripts/bench_encode.py``)."""
        out = np.empty((len(ids), self.model.config.dim), np.float32)
        for group in length_groups([len(x) for x in ids], batch):
            padded, mask = make_batch([ids[i] for i in group], self.model.config, self.pad_id,
                                      self.unk_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out[group] = self.model.embed_posts(padded, mask).float().numpy()
        return out

    @torch.no_grad()
    def scores(self, posts: Sequence[Post]) -> np.ndarray:
        """(P, n_tags): f(w, t) for every post and tag."""
        ids = [self.word_ids(p.tokens) for p in posts]  # once: the bonus needs them too
        config = self.model.config
        padded = make_batch(ids, config, self.pad_id, self.unk_id)[0] \
            if config.word_tag_share else None
        scores = self.model.score_all(torch.from_numpy(self.embed_ids(ids)), padded).numpy()
        active = self.tags.active_mask()
        if active is not None:
            scores[:, ~active] = -np.inf  # free rows of an online vocabulary are not tags
        elif self._free_rows is not None:
            scores[:, self._free_rows] = -np.inf
        return scores

    def active_tags(self) -> ActiveTags:
        """The rows in use, cached until the vocabulary's ``generation`` moves (an online
        vocabulary admitted or renewed a row); a plain vocabulary never changes."""
        key = getattr(self.tags, "generation", None)  # read before the mask: never stale
        cached = self._active  # one read: request threads share the cache
        if cached is not None and cached.key == key:
            return cached
        active = self.tags.active_mask()
        if active is not None:
            rows = np.flatnonzero(active)
        elif self._free_rows is not None:
            rows = np.setdiff1d(np.arange(len(self.tags)), self._free_rows)
        else:
            rows = np.arange(len(self.tags))
        self._active = ActiveTags(rows.astype(np.int64), key)
        return self._active

    @torch.no_grad()
    def score_active(self, token_lists: Sequence[Sequence[str]]) -> ActiveScores:
        """The serving path: f(w, t) for the tags in use only, (P, N), from the live weights;
        the same values as ``scores`` on those columns."""
        model = self.model
        ids = [self.word_ids(t) for t in token_lists]  # once: the bonus needs them too
        emb = torch.from_numpy(self.embed_ids(ids))  # (P, d)
        active = self.active_tags()
        table = model.tag_emb.detach()  # the live table: Hogwild writes it in place
        n, span = len(active.rows), active.span
        if active.prefix:
            scores = emb @ table[:span].T  # a view: no copy of the rows
        elif 3 * n >= span:  # mostly in use: one product over the span, then the columns
            scores = (emb @ table[:span].T)[:, torch.from_numpy(active.rows)]
        else:
            scores = emb @ table[torch.from_numpy(active.rows)].T  # gather the N rows
        out = scores.numpy()
        if model.config.word_tag_share:
            # f(w, t) += beta * [t in w], on the few tags spelled as one of the post's words
            beta = np.float32(model.copy_weight.item())
            for b, post_ids in enumerate(ids):
                present = model.tags_in_posts(torch.from_numpy(post_ids)).numpy()  # -1: none
                at = active.positions(np.unique(present[present >= 0]))
                out[b, at[at >= 0]] += beta
        return ActiveScores(active, out, emb.numpy())

    def suggest(self, text: str, k: int = 10) -> list[Suggestion]:
        post = Post("", None, None, tokenize(text), ())
        row = self.scores([post])[0]
        return top_k(row, self.tags, k)


def top_k(row: np.ndarray, tags: Vocabulary, k: int,
          rows: np.ndarray | None = None) -> list[Suggestion]:
    """The k best tags of one score row, best first (ties by tag id, as in the metrics).

    ``rows``: the tag id of each column when ``row`` is compact (``ActiveScores``, ascending
    ids, so ties still go by tag id); None: column i is tag i."""
    k = max(0, min(k, len(row)))
    if k == 0:
        return []
    if k < len(row) // 4:  # O(n) selection first: 100k tags, 10 wanted
        threshold = np.partition(row, len(row) - k)[len(row) - k]
        candidates = np.flatnonzero(row >= threshold)  # ties at the threshold all stay
        order = candidates[np.lexsort((candidates, -row[candidates]))][:k]
    else:
        order = np.argsort(-row, kind="stable")[:k]
    ids = order if rows is None else rows[order]
    return [Suggestion(tags.tokens[t], float(row[i])) for i, t in zip(order, ids, strict=True)
            if row[i] > -np.inf]
