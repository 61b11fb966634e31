#!/usr/bin/env python
"""The feed's per-request arithmetic: exact scan (float32, bf16) vs the ANN index, on real posts.

Candidates: the posts of howyoutagtweets train.csv (every user's), then raw tweets of
TweetEval (hashtags stripped, deduplicated, one synthetic author each) to reach the larger
sizes, all embedded by a trained model. Users: ``--users`` users with at least 5 posts in
train.csv (seeded); a user's history is their own newest ``h`` posts (paper 4.3: documents
recommended from a user's own posts), and their own posts are excluded from their feed, as
the daemon excludes them (so the ANN must look past each history post's nearest neighbours,
which are often the user's other posts). No user has 50 posts in train.csv (at most 36), so
``--history-from tags`` tops a history up to ``h`` with others' newest posts that carry the
user's hashtags (as their likes would be; excluded from the feed, as seen posts are).

Each size is reached by feeding the posts through a real ``CandidateIndex`` (the ANN index
follows its adds), then every user's feed is ranked by
- ``before``: the former code (``(V @ H.T).max(axis=1)`` in numpy, masks, argpartition),
- ``fp32``: the exact scan in float32 (H V^T blocks, max over axis 0),
- ``bf16``: the exact scan in bf16 with its float32 re-score (the daemon's default here),
- ``ann``: the ANN index (each history post a query, the union re-scored exactly; the exact
  scan when the neighbours left after the exclusions cannot fill k),
- ``daemon``: what FeedRanker.rank picks (the ANN from ANN_CANDIDATES_PER_QUERY x h); it
  runs last on each request, so its time is cache-warm: read it for its choice and recall,
and timed per request (one thread, as one HTTP request runs). Printed: ms per request (mean,
p50, p99), recall@k of the ANN against the exact float32 top k, bf16's top-k overlap with
float32 and its raw score error (before the re-score), and the switch point (the first size
where the ANN is faster at the mean). Recall and overlap are tie-aware: a returned post
counts when its exact score reaches the true k-th score (real posts repeat: one user's top
217 all score 1.0). The machine is shared: each row records the load average; compare
methods within a row (they run interleaved, request by request). Redis is not involved (a
feed is one round trip, tests/test_daemon_store.py).

Usage: python scripts/bench_feed.py --model runs/hyt64 [--sizes 20000,54000,100000,173438]
           [--history 10,50] [--history-from own|tags] [--users 200] [--cache emb.npy]
           [--stored float32|float16|int8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import usearch

import daemon.candidates as candidates_module
import daemon.feed as feed_module
import daemon.feed_index as feed_index_module
from daemon.candidates import CandidateIndex
from daemon.feed import FeedRanker
from daemon.feed_index import FeedIndex
from daemon.store import StoredPost
from tagspace.checkpoint import load_checkpoint
from tagspace.dataset import read_posts
from tagspace.recommend import unit_rows
from tagspace.text import tokenize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = ("before", "fp32", "bf16", "ann", "daemon")


class ListStore:
    """The two calls CandidateIndex makes, over posts held in memory."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str]] = []
        self.stored: dict[str, StoredPost] = {}

    def add(self, post: StoredPost) -> None:
        self.stored[post.post_id] = post
        self.arrivals.append((f"{len(self.arrivals) + 1}-0", post.post_id))

    def arrivals_after(self, cursor: str, limit: int) -> list[tuple[str, str]]:
        start = int(cursor.split("-")[0])
        return self.arrivals[start:start + limit]

    def posts(self, post_ids, with_tokens: bool = False):  # type: ignore[no-untyped-def]
        return [self.stored.get(p) for p in post_ids]


def real_posts(train: Path, extra: list[Path], limit: int) -> tuple[list, list, list]:
    """(user or None, tokens, tags) of train.csv's posts, then of the extra files' lines."""
    posts = [(p.user_id, p.tokens) for p in read_posts(train) if p.tokens]
    tags = [p.tags for p in read_posts(train) if p.tokens]
    seen = {" ".join(t) for _, t in posts}
    for path in extra:
        if len(posts) >= limit:
            break
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            tokens = tokenize(line)
            key = " ".join(tokens)
            if len(tokens) >= 3 and key not in seen:
                seen.add(key)
                posts.append((None, tokens))
    tags += [()] * (len(posts) - len(tags))
    return [u for u, _ in posts[:limit]], [t for _, t in posts[:limit]], tags[:limit]


def user_history(u: str, n: int, h: int, by_user, by_tag, tags, mode: str):  # type: ignore[no-untyped-def]
    """(history rows, excluded rows besides the user's own) among the first n candidates:
    ``own``: the user's newest h posts. ``tags``: those, topped up to h with the newest
    posts of others that carry one of the user's hashtags (as likes would be; seen, so
    excluded from the feed too)."""
    own = [r for r in by_user[u] if r < n][-h:]
    if mode == "own" or len(own) >= h:
        return own, []
    mine = {t for r in by_user[u] for t in tags[r]}
    liked = sorted({r for t in mine for r in by_tag.get(t, ()) if r < n} - set(by_user[u]))
    liked = liked[-(h - len(own)):]
    return own + liked, liked


def stored_as(vectors: np.ndarray, kind: str) -> np.ndarray:
    """The unit rows as a Redis that keeps them in ``kind`` would give them back (float32)."""
    if kind == "float16":
        return vectors.astype(np.float16).astype(np.float32)
    if kind == "int8":  # per row: int8 codes and a float32 scale (max |x| / 127)
        scale = np.abs(vectors).max(axis=1, keepdims=True) / 127.0
        return (np.round(vectors / scale).astype(np.int8) * scale).astype(np.float32)
    return vectors


def true_recall(vectors: np.ndarray, n: int, history_rows: list[int], excluded: np.ndarray,
                served: list, k: int) -> float:
    """Recall@k of ``served`` (FeedItems of posts ``p{row}``) against the exact float32 top k
    of the original vectors, tie-aware as ``hits``."""
    scores = (vectors[:n] @ vectors[history_rows].T).max(axis=1)
    scores[excluded] = -np.inf
    kth = np.partition(scores, n - k)[n - k]
    got = [scores[int(i.post_id[1:])] for i in served]
    return sum(s >= kth - 1e-6 for s in got) / k


def before(view, history: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """The former FeedRanker's arithmetic, for the record."""
    allowed = np.ones(len(view.ids), bool)
    allowed[excluded] = False
    scores = np.where(allowed, (view.vectors @ history.T).max(axis=1), -np.inf)
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def timed(fn, reps: int = 1):  # type: ignore[no-untyped-def]
    """(result, ms): the median of ``reps`` runs (the machine is shared: a median per request
    keeps another process's time slice out of one sample)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(np.median(times)) * 1e3


def hits(truth_kth: float, items) -> int:  # type: ignore[no-untyped-def]
    """Items whose exact score reaches the true k-th score: tie-aware (real posts repeat,
    e.g. 217 candidates score 1.0 for one user; any k of them is a correct top k)."""
    return sum(i.score >= truth_kth - 1e-5 for i in items or [])


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("runs/hyt64"))
    p.add_argument("--train", type=Path, default=SHARED / "howyoutagtweets" / "train.csv")
    p.add_argument("--extra", type=Path, nargs="*",
                   default=sorted((SHARED / "tweeteval" / "datasets").glob("*/*_text.txt"))
                   + sorted((SHARED / "tweeteval" / "datasets").glob("*/*/*_text.txt")))
    p.add_argument("--sizes", default="20000,54000,100000,200000")
    p.add_argument("--history", default="10,50", help="history lengths h")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--min-posts", type=int, default=5, help="posts a chosen user has at least")
    p.add_argument("--history-from", choices=["own", "tags"], default="own",
                   help="own: a user's own newest posts; tags: topped up to h with others' "
                        "posts sharing their hashtags")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--connectivity", type=int, default=feed_index_module.CONNECTIVITY)
    p.add_argument("--expansion-add", type=int, default=feed_index_module.EXPANSION_ADD)
    p.add_argument("--expansion-search", type=int, default=feed_index_module.EXPANSION_SEARCH)
    p.add_argument("--neighbours", type=int, default=feed_index_module.NEIGHBOURS)
    p.add_argument("--ann-dtype", default=feed_index_module.DTYPE)
    p.add_argument("--reps", type=int, default=3, help="runs per request (median kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--cache", type=Path, help="embeddings kept here between runs (.npy)")
    p.add_argument("--stored", choices=["float32", "float16", "int8"], default="float32",
                   help="the precision Redis keeps embeddings in: candidates and histories "
                   "are read back at it, and the daemon's feeds are also scored against the "
                   "exact float32 top k of the original vectors (stored_recall_at_k)")
    args = p.parse_args()
    torch.set_num_threads(1)  # as the daemon: one request, one core
    sizes = sorted(int(s) for s in args.sizes.split(","))
    histories = [int(h) for h in args.history.split(",")]

    t0 = time.perf_counter()
    users, tokens, tags = real_posts(args.train, args.extra, sizes[-1])
    if len(tokens) < sizes[-1]:
        print(f"only {len(tokens)} real posts: sizes cut to it")
        sizes = [s for s in sizes if s < len(tokens)] + [len(tokens)]
    if args.cache and args.cache.is_file() and len(np.load(args.cache)) == len(tokens):
        vectors = np.load(args.cache)
    else:
        tagger = load_checkpoint(args.model).tagger
        vectors = unit_rows(tagger.embed_all(tokens).astype(np.float32))
        if args.cache:
            np.save(args.cache, vectors)
    print(f"{len(tokens)} real posts embedded by {args.model} in {time.perf_counter() - t0:.0f} s")

    by_user: dict[str, list[int]] = {}
    for i, u in enumerate(users):
        if u is not None:
            by_user.setdefault(u, []).append(i)
    by_tag: dict[str, list[int]] = {}
    for i, post_tags in enumerate(tags):
        for t in post_tags:
            by_tag.setdefault(t, []).append(i)
    rng = np.random.default_rng(args.seed)
    eligible = sorted(u for u, rows in by_user.items() if len(rows) >= args.min_posts)
    chosen = [eligible[i] for i in rng.choice(len(eligible), min(args.users, len(eligible)),
                                              replace=False)]

    store = ListStore()
    original, vectors = vectors, stored_as(vectors, args.stored)
    for i, (u, v) in enumerate(zip(users, vectors, strict=True)):
        store.add(StoredPost(f"p{i}", u or f"x{i}", float(i), [], [], v, 1))
    ann = FeedIndex(vectors.shape[1], connectivity=args.connectivity,
                    expansion_add=args.expansion_add, expansion_search=args.expansion_search,
                    neighbours=args.neighbours, dtype=args.ann_dtype)
    candidates_module.FETCH = 1000
    index = CandidateIndex(store, capacity=sizes[-1], dim=vectors.shape[1],
                           ann_min_candidates=1, bf16=True, ann=ann)
    hub = SimpleNamespace(version=1)
    ranker = FeedRanker(hub, None, index, max(histories))  # type: ignore[arg-type]
    # the ANN as the daemon serves it, at every size: the exact scan when its neighbours
    # cannot fill k (counted in ann_fallbacks)
    ann_ranker = FeedRanker(hub, None, index, max(histories),  # type: ignore[arg-type]
                            ann_candidates_per_query=0)

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
               "usearch": usearch.__version__, "bf16_cpu": candidates_module.cpu_has_bf16()}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                                  if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    params = {"connectivity": args.connectivity, "expansion_add": args.expansion_add,
              "expansion_search": args.expansion_search, "neighbours": args.neighbours,
              "dtype": args.ann_dtype, "k": args.k, "users": len(chosen)}
    print(json.dumps({"machine": machine, "ann": params}))
    results = []
    store_arrivals = store.arrivals
    for n in sizes:
        store.arrivals = store_arrivals[:n]
        start = time.perf_counter()
        index.refresh()
        build_s = time.perf_counter() - start
        view = index.snapshot()
        assert len(view.ids) == n
        for h in histories:
            ms: dict[str, list[float]] = {m: [] for m in METHODS}
            recall, overlap, same_ids, bf16_err, score_err = [], [], [], 0.0, 0.0
            daemon_recall, stored_recall = [], []
            lengths = []
            falls = (ranker.stats.bf16_fallbacks, ann_ranker.stats.ann_fallbacks)
            for u in chosen:
                rows, liked = user_history(u, n, h, by_user, by_tag, tags, args.history_from)
                if not rows:
                    continue
                history = np.ascontiguousarray(vectors[rows])
                lengths.append(len(rows))
                excluded = np.concatenate([np.flatnonzero(view.authors == view.author_code[u]),
                                           np.asarray(liked, np.int64)])
                k = args.k
                r = args.reps
                _, t = timed(lambda: before(view, history, excluded, k), r)  # noqa: B023
                ms["before"].append(t)
                exact, t = timed(lambda: ranker.exact_rank(view, history, excluded, k,  # noqa: B023
                                                           bf16=False), r)
                ms["fp32"].append(t)
                low, t = timed(lambda: ranker.exact_rank(view, history, excluded, k), r)  # noqa: B023
                ms["bf16"].append(t)
                approx, t = timed(lambda: ann_ranker.rank(view, history, excluded, k), r)  # noqa: B023
                ms["ann"].append(t)
                served, t = timed(lambda: ranker.rank(view, history, excluded, k), r)  # noqa: B023
                ms["daemon"].append(t)
                kth = exact[-1].score
                overlap.append(hits(kth, low) / len(exact))
                recall.append(hits(kth, approx) / len(exact))
                daemon_recall.append(hits(kth, served) / len(exact))
                stored_recall.append(true_recall(original, n, rows, excluded, served, k))
                truth = {i.post_id for i in exact}
                same_ids.append(len(truth & {i.post_id for i in approx or []}) / len(truth))
                score_err = max(score_err, max(abs(a.score - b.score)
                                               for a, b in zip(exact, low, strict=True)))
                raw = (view.low @ torch.from_numpy(history).to(torch.bfloat16).T).amax(1)
                full = (view.vectors @ history.T).max(axis=1)
                bf16_err = max(bf16_err, float(np.abs(raw.float().numpy() - full).max()))
            row = {"candidates": n, "history": h, "history_mean": round(np.mean(lengths), 1),
                   "index_build_s": round(build_s, 1),
                   "load_avg_1m": round(os.getloadavg()[0], 2),
                   **{f"{m}_ms": summary(v) for m, v in ms.items()},
                   "ann_recall_at_k": round(float(np.mean(recall)), 4),
                   "ann_recall_min": round(float(np.min(recall)), 3),
                   "ann_same_ids": round(float(np.mean(same_ids)), 4),
                   "daemon_recall_at_k": round(float(np.mean(daemon_recall)), 4),
                   "stored": args.stored,
                   "stored_recall_at_k": round(float(np.mean(stored_recall)), 4),
                   "bf16_topk_overlap": round(float(np.mean(overlap)), 4),
                   "bf16_raw_score_error_max": round(bf16_err, 5),
                   "bf16_served_score_error_max": round(score_err, 7),
                   "bf16_fallbacks": ranker.stats.bf16_fallbacks - falls[0],
                   "ann_fallbacks": ann_ranker.stats.ann_fallbacks - falls[1]}
            results.append(row)
            print(json.dumps(row))
    print(f"\n{'n':>7} {'h':>3} {'mean h':>6} | ms per request, mean (p99): "
          + " ".join(f"{m:>14}" for m in METHODS)
          + f" | recall@{args.k} ann, daemon | bf16 overlap")
    for r in results:
        cells = " ".join(f"{r[f'{m}_ms']['mean']:7.2f} ({r[f'{m}_ms']['p99']:5.1f})"
                         for m in METHODS)
        print(f"{r['candidates']:>7} {r['history']:>3} {r['history_mean']:>6} | {cells} | "
              f"{r['ann_recall_at_k']:.4f}, {r['daemon_recall_at_k']:.4f} | "
              f"{r['bf16_topk_overlap']:.4f}")
    for h in histories:
        rows = [r for r in results if r["history"] == h]
        switch = next((r for r in rows if r["ann_ms"]["mean"] < r["bf16_ms"]["mean"]), None)
        if switch is None:
            print(f"h={h}: the bf16 exact scan is faster up to {sizes[-1]} candidates")
        else:
            n, mean_h = switch["candidates"], switch["history_mean"]
            print(f"h={h} (mean {mean_h}): the ANN is faster than the bf16 exact scan from "
                  f"{n} candidates (the sizes measured), {n / mean_h:.0f} per history post "
                  f"(the daemon takes the ANN from "
                  f"{feed_module.ANN_CANDIDATES_PER_QUERY} per history post)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "ann": params,
                                         "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
