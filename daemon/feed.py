"""Per-user feeds: the in-memory candidates ranked by max cosine similarity over the user's
newest history posts (paper section 4.3), never showing the user's own posts or posts they
interacted with or hid; a user without history gets the freshest popular posts (``cold_start``).

One request = one Redis round trip (``Store.feed_state``: seen set, history, its posts) plus
arithmetic over the in-memory candidates, by one of two scans:

- exact: s_j = max_q <q, v_j> over the history rows q, as (h x n) = H V^T blocks reduced over
  axis 0 (contiguous), CHUNK candidates at a time in reused buffers. Where the CPU
  multiplies bfloat16 natively the scan runs in bf16, then its best ``POOL`` are re-scored in
  float32, and the result is provably the float32 ranking: for unit vectors rounded to bf16
  (unit roundoff u = 2^-9), |<q', v'> - <q, v>| <= (2u + u^2) |q||v| (Cauchy-Schwarz), plus
  u for rounding the fp32-accumulated product to bf16, so every bf16 max-cosine is within
  BF16_ERROR = 4u of the exact one. Every candidate outside the pool has a bf16 score <= the
  pool's lowest, B; when B + BF16_ERROR < the k-th exact score in the pool, none of them can
  enter the top k. Otherwise (rare: a flat score distribution) the float32 scan runs.
- ANN (``view.ann``, set by ``CandidateIndex`` from ``ANN_MIN_CANDIDATES`` candidates on):
  each history post a query, the union of their neighbours re-scored exactly, filtered, top k
  (``daemon/feed_index.py``). The scan costs ~ n (a + b h), the ANN ~ c h (h queries), so
  where they cross grows with the history length h: measured (scripts/bench_feed.py, real
  posts) between 20k and 54k candidates at h = 10 and between 54k and 100k at h = 43, about
  ``ANN_CANDIDATES_PER_QUERY`` x h, so a request takes the ANN when n >= that, else scans.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from daemon.candidates import CandidateIndex, CandidateView
from daemon.model_hub import ServedModel
from daemon.store import FeedState, Store
from tagspace.recommend import unit_rows

FRESH_HALF_LIFE_S = 6 * 3600.0  # cold start: popularity discounted by age
COLD_START_POOL = 5000  # the most liked posts considered for a cold-start feed
COLD_START_TTL_S = 1.0  # popularity is read at most this often (a cold feed is <= 1 s stale)
CHUNK = 16384  # candidates per block of the scan: the block buffer is h x CHUNK, not h x n
MAX_STALE = 10_000  # history posts waiting for background re-embedding
POOL = 256  # bf16 scan: this many best (at least 4k) are re-scored in float32
BF16_ERROR = 4 * 2.0**-9  # bound on |bf16 max-cosine - float32 max-cosine| (module docstring)
ANN_CANDIDATES_PER_QUERY = 2500  # the ANN answers from this many candidates per history post


@dataclass(frozen=True)
class FeedItem:
    post_id: str
    score: float


@dataclass
class FeedStats:
    """How feeds were answered (read by benchmarks and tests)."""

    exact_bf16: int = 0
    exact_fp32: int = 0  # the float32 scan (no bf16, or the bf16 bound did not hold)
    bf16_fallbacks: int = 0
    ann: int = 0
    ann_fallbacks: int = 0  # the ANN found fewer than k allowed posts: the exact scan ran
    cold: int = 0


class _Scratch:
    """One request's buffers, grown on demand and reused by later requests, so a request
    allocates nothing of the candidates' size."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, name: str, size: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < size:
            buf = self._buffers[(name, dtype)] = torch.empty(max(size, 1024), dtype=dtype)
        return buf[:size]


class FeedRanker:
    def __init__(self, hub: ServedModel, store: Store, candidates: CandidateIndex,
                 feed_history: int, *, clock: Callable[[], float] = time.time,
                 ann_candidates_per_query: int = ANN_CANDIDATES_PER_QUERY):
        self.hub, self.store, self.candidates = hub, store, candidates
        self.feed_history = feed_history
        self.ann_candidates_per_query = ann_candidates_per_query
        self.clock = clock
        self.stats = FeedStats()
        self._spare: list[_Scratch] = []  # as many as requests ever ran at once
        self._spare_lock = threading.Lock()
        self._popular: tuple[float, dict[str, float]] | None = None  # (read at, post -> likes)
        self._cold: tuple[CandidateView, float, np.ndarray] | None = None  # (view, at, scores)
        # history posts embedded by an older version, for the maintenance loop to re-embed
        self._stale: dict[str, None] = {}  # insertion-ordered, at most MAX_STALE
        self._stale_lock = threading.Lock()

    def feed(self, user_id: str, k: int) -> tuple[list[FeedItem], bool]:
        """(items, cold_start)."""
        view = self.candidates.snapshot()
        if not view.ids:
            return [], True
        dim = view.vectors.shape[1]
        state = self.store.feed_state(user_id, self.feed_history, self.hub.version, dim)
        excluded = self._excluded(view, user_id, state.seen)
        history = self._history_vectors(state, dim)
        if history is None:
            self.stats.cold += 1
            return self._cold_start(view, excluded, k), True
        return self.rank(view, history, excluded, k), False

    def rank(self, view: CandidateView, history: np.ndarray, excluded: np.ndarray,
             k: int) -> list[FeedItem]:
        """The top ``k`` candidates by max cosine over ``history`` (unit rows, float32),
        never the ``excluded`` rows: by the ANN index when the view has one and it costs less
        than the scan (n >= ann_candidates_per_query x h), else exactly."""
        history = np.ascontiguousarray(history, np.float32)
        n = len(view.ids)
        k = min(k, n - len(np.unique(excluded)))
        if k <= 0:
            return []
        if view.ann is not None and n >= self.ann_candidates_per_query * len(history):
            items = self.ann_rank(view, history, excluded, k)
            if items is not None:
                self.stats.ann += 1
                return items
            self.stats.ann_fallbacks += 1
        return self.exact_rank(view, history, excluded, k)

    def exact_rank(self, view: CandidateView, history: np.ndarray, excluded: np.ndarray,
                   k: int, *, bf16: bool = True) -> list[FeedItem]:
        """The exact top ``k`` (bf16 scan proven by its float32 re-score, or float32)."""
        history = np.ascontiguousarray(history, np.float32)
        n = len(view.ids)
        k = min(k, n - len(np.unique(excluded)))
        if k <= 0:
            return []
        with self._scratch() as scratch:
            return self._exact_rank(scratch, view, history, excluded, k, bf16)

    def _exact_rank(self, scratch: _Scratch, view: CandidateView, history: np.ndarray,
                    excluded: np.ndarray, k: int, bf16: bool) -> list[FeedItem]:
        n = len(view.ids)
        gone = torch.from_numpy(excluded)
        if bf16 and view.low is not None:
            low = _max_cosine(scratch, view.low, torch.from_numpy(history).to(torch.bfloat16))
            low[gone] = -torch.inf
            pool = min(n, max(POOL, 4 * k))
            values, rows_t = torch.topk(low, pool, sorted=False)
            rows, bound = rows_t.numpy(), values.float().numpy()
            kept = bound > -np.inf
            rows, bound = rows[kept], bound[kept]
            exact = _rescore(view.vectors, rows, history)
            best = _top(exact, k)
            complete = pool == n or len(rows) < pool  # every allowed row is in the pool
            if complete or bound.min() + BF16_ERROR < exact[best[-1]]:
                self.stats.exact_bf16 += 1
                return [FeedItem(view.ids[rows[i]], float(exact[i])) for i in best]
            self.stats.bf16_fallbacks += 1
        self.stats.exact_fp32 += 1
        scores_t = _max_cosine(scratch, torch.from_numpy(view.vectors),
                               torch.from_numpy(history))
        scores_t[gone] = -torch.inf
        return _top_items(view, scores_t, k)

    def ann_rank(self, view: CandidateView, history: np.ndarray, excluded: np.ndarray,
                  k: int) -> list[FeedItem] | None:
        assert view.ann is not None
        keys = view.ann.search(history)
        at = np.searchsorted(view.keys, keys)
        inside = at < len(view.keys)
        at, keys = at[inside], keys[inside]
        rows = at[view.keys[at] == keys]  # keys of rows the index has and this view has not
        rows = rows[~np.isin(rows, excluded)]
        if len(rows) < k:
            return None
        exact = _rescore(view.vectors, rows, history)
        best = _top(exact, k)
        return [FeedItem(view.ids[rows[i]], float(exact[i])) for i in best]

    @contextmanager
    def _scratch(self) -> Iterator[_Scratch]:
        """Buffers for one request: a spare one (the most recently used), else new ones."""
        with self._spare_lock:
            scratch = self._spare.pop() if self._spare else _Scratch()
        try:
            yield scratch
        finally:
            with self._spare_lock:
                self._spare.append(scratch)

    @staticmethod
    def _excluded(view: CandidateView, user_id: str, seen: list[str]) -> np.ndarray:
        """Rows never shown to the user: their own posts, and what they liked, shared, hid."""
        own = np.flatnonzero(view.authors == view.author_code.get(user_id, -1))
        seen_rows = view.rows(seen)
        return np.concatenate([own, seen_rows]) if len(seen_rows) else own

    def _history_vectors(self, state: FeedState, dim: int) -> np.ndarray | None:
        """Unit embeddings of the user's newest history posts. One without a usable embedding
        (none, or another model's size) is embedded now and written back; one embedded by an
        older version of this model is used as stored and queued for the maintenance loop's
        re-embedding (``take_stale``): re-embedding up to ``feed_history`` posts on the request
        path cost more than the rest of a feed, and the live model moves continuously anyway."""
        if not state.history:
            return None
        unusable = [p for p in state.history if state.unusable(p, dim)]
        vectors = {p.post_id: p.embedding for p in state.history
                   if p.embedding is not None and not state.unusable(p, dim)}
        older = [p.post_id for p in state.history
                 if not state.unusable(p, dim) and state.older(p)]
        if older:
            with self._stale_lock:
                for post_id in older:
                    if len(self._stale) < MAX_STALE:
                        self._stale[post_id] = None
        if unusable:
            embs, _, _ = self.hub.reembed(self.store, unusable)
            vectors.update({p.post_id: e for p, e in zip(unusable, embs, strict=True)})
        rows = np.stack([vectors[p.post_id] for p in state.history]).astype(np.float32)
        return np.ascontiguousarray(unit_rows(rows))

    def take_stale(self, n: int) -> list[str]:
        """Up to ``n`` history posts seen with an older version's embedding, oldest first."""
        with self._stale_lock:
            taken = list(self._stale)[:n]
            for post_id in taken:
                del self._stale[post_id]
        return taken

    def _cold_start(self, view: CandidateView, excluded: np.ndarray, k: int) -> list[FeedItem]:
        n = len(view.ids)
        k = min(k, n - len(np.unique(excluded)))
        if k <= 0:
            return []
        base = torch.from_numpy(self._cold_scores(view))
        with self._scratch() as scratch:
            scores = scratch.take("scores", n, torch.float32)
            scores.copy_(base)
            scores[torch.from_numpy(excluded)] = -torch.inf
            return _top_items(view, scores, k)

    def _cold_scores(self, view: CandidateView) -> np.ndarray:
        """log(1 + likes) + 0.5^(age / half-life) per candidate, cached per view for at most
        COLD_START_TTL_S (the popularity read is shared by every cold-start feed meanwhile)."""
        now = self.clock()
        cold = self._cold
        if cold is not None and cold[0] is view and now - cold[1] < COLD_START_TTL_S:
            return cold[2]
        popular = self._popular
        if popular is None or now - popular[0] >= COLD_START_TTL_S:
            popular = self._popular = (now, self.store.most_popular(COLD_START_POOL))
        likes = np.zeros(len(view.ids), np.float32)
        for post_id, count in popular[1].items():
            i = view.row(post_id)
            if i is not None:
                likes[i] = count
        age = np.clip(now - view.ts, 0.0, None)
        scores = (np.log1p(likes) + 0.5 ** (age / FRESH_HALF_LIFE_S)).astype(np.float32)
        self._cold = (view, now, scores)
        return scores


def _max_cosine(scratch: _Scratch, vectors: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(n,) max over history rows of <q, v_j>: (h x CHUNK) blocks of H V^T, each reduced over
    axis 0 (contiguous) into the scratch's buffer. Blocks bound the buffer at h x CHUNK; they
    cost no measurable time against one (h x n) product."""
    n, h = vectors.shape[0], history.shape[0]
    out = scratch.take("scores", n, vectors.dtype)
    block = scratch.take("block", h * min(CHUNK, n), vectors.dtype)
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        part = block[: h * (end - start)].view(h, end - start)
        torch.mm(history, vectors[start:end].T, out=part)
        torch.amax(part, dim=0, out=out[start:end])
    return out


def _rescore(vectors: np.ndarray, rows: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Exact float32 max cosine of a few rows. torch, not numpy: numpy's OpenBLAS runs small
    products on all its threads, which under load costs ~10x (measured: 3.5 vs 0.37 ms)."""
    picked = torch.from_numpy(vectors[rows])
    return torch.mm(picked, torch.from_numpy(history).T).amax(dim=1).numpy()


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest of a few scores, best first: O(n) selection, a sort of k."""
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.argsort(-scores[best], kind="stable")]


def _top_items(view: CandidateView, scores: torch.Tensor, k: int) -> list[FeedItem]:
    """The k best of all candidates' scores: torch.topk selects in O(n) without copying n."""
    values, rows = torch.topk(scores, k)
    return [FeedItem(view.ids[i], v) for i, v in zip(rows.tolist(), values.tolist(),
                                                      strict=True)]
