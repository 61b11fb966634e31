#!/usr/bin/env python
"""Per-request cost of a hashtag suggestion (``daemon.scorer.Scorer.suggest``), no servers.

The live model as the daemon holds it: a tag table of --capacity rows (100k) with the tags in
use among them, an author history in a fake store, one thread (the daemon's request threads run
torch single-threaded). Two models:

- synthetic (default): d=64, H=1000, K=5, word-tag sharing, random weights, --tags in use
  (19k), cooking posts as queries and as the author's --history past posts;
- real (--model, --train, --valid): a ``tagspace train`` model grown to --capacity rows, the
  authors' histories from --train, --valid posts as queries. It also checks that the served top
  10 equals the library's (``PersonalizedScorer``, i.e. ``evaluate --personalize``) post by post,
  and how far bf16 moves the rankings.

Printed per request (median and p99 of --n calls): the path before the serving rewrite rebuilt
from the library's offline API (``Tagger.scores`` over every row, ``Personalizer.scores``,
``top_k``; "full-capacity"), the served path, its parts, and fp32 against bf16 for the two
matrix products (tag scores, the encoder's convolution).

With --open-vocab (real mode), the same with open-vocabulary scorers: the cost per request and
the served top 10 against the library's open-vocabulary ranking, with the served P@1 / R@10.

Usage: python scripts/bench_suggest.py [--tags 19000] [--n 300] [--profile]
       python scripts/bench_suggest.py --model runs/hyt64 \\
           --train ../shared/data/howyoutagtweets/train.csv \\
           --valid ../shared/data/howyoutagtweets/valid.csv [--open-vocab DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.scorer import Scorer  # noqa: E402
from tagspace.bow import BagOfWords  # noqa: E402
from tagspace.dataset import Post, read_posts  # noqa: E402
from tagspace.hogwild import TrainConfig  # noqa: E402
from tagspace.model import ModelConfig  # noqa: E402
from tagspace.online import Capacity, OnlineTagSpace, restore_online  # noqa: E402
from tagspace.personalize import (  # noqa: E402
    DEFAULT_WEIGHTS,
    MAX_HISTORY_POSTS,
    AuthorHistory,
    AuthorProfiles,
    PersonalizedScorer,
    Personalizer,
    PersonalizeWeights,
    load_personalization,
)
from tagspace.tagger import Tagger, top_k  # noqa: E402
from tagspace.text import parse_post_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_WEIGHTS = PersonalizeWeights(count=6.0, similarity=2.0, lexical=8.0, popularity=0.5)
Authored = list[tuple[str, list[str], list[str]]]


class FakeStore:
    """``Store.authored``: each author's newest tagged posts, oldest first."""

    def __init__(self, authored: dict[str, Authored], default: Authored | None = None):
        self._authored, self._default = authored, default or []

    def authored(self, user_id: str) -> Authored:
        return self._authored.get(user_id, self._default)

    def authored_many(self, user_ids: list[str | None]) -> list[Authored]:
        return [self.authored(u) if u is not None else [] for u in user_ids]


def synthetic(n_tags: int, capacity: int, history: int) -> tuple[Scorer, list[Post]]:
    posts = list(read_posts(ROOT / "data/cooking/cooking.train"))
    config = ModelConfig(encoder="conv", dim=64, hidden=1000, kernel=5, dropout=0.0,
                         word_tag_share=True)
    online = OnlineTagSpace.fresh(config, Capacity(words=50_000, tags=capacity,
                                                   min_word_count=1, min_tag_count=1),
                                  TrainConfig())
    for p in posts:
        online.words.observe(p.tokens, 0.0)
    real = list(dict.fromkeys(t for p in posts for t in p.tags))[:n_tags]
    online.tags.observe(real, 0.0)
    filler = [f"tag{j}" for j in range(n_tags - len(real))]
    for i in range(0, len(filler), 1000):
        online.tags.observe(filler[i : i + 1000], 0.0)
    online.model.link_words_to_tags(online.words.tokens, {
        t: i for i, t in enumerate(online.tags.tokens) if online.tags.active[i]})
    bow = BagOfWords([p.tokens for p in posts[:5000]])
    past = [(f"h{i}", list(p.tags), list(p.tokens)) for i, p in enumerate(posts[:history])]
    hub = SimpleNamespace(online=online, tagger=online.tagger, version=1, weights_id=0,
                          personalizer=Personalizer(SYNTHETIC_WEIGHTS, bow))
    queries = [Post(f"q{i}", f"u{i}", None, p.tokens, p.tags)  # 500 authors, one history
               for i, p in enumerate(posts[5000:5500])]
    return Scorer(hub, FakeStore({}, past)), queries  # type: ignore[arg-type]


def real(model_dir: Path, train: Path, valid: Path,
         capacity: int) -> tuple[Scorer, list[Post], PersonalizedScorer]:
    from tagspace.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model_dir)
    weights, bow = load_personalization(model_dir, checkpoint.extra, DEFAULT_WEIGHTS)
    queries = [p for p in read_posts(valid, require_tags=True) if p.user_id]
    ids = {p.post_id for p in queries}
    history = [p for p in read_posts(train, require_tags=True) if p.post_id not in ids]
    profiles = AuthorProfiles.from_posts(history)
    library = PersonalizedScorer(checkpoint.tagger, profiles, weights, bow)
    authored: dict[str, Authored] = {
        user: [(f"{user}-{i}", list(t), list(w))
               for i, (t, w) in enumerate(zip(h.post_tags, h.post_tokens, strict=True))]
        for user, h in profiles.histories.items()}
    online = restore_online(checkpoint.tagger, Capacity(words=len(checkpoint.tagger.words),
                                                        tags=capacity), TrainConfig())
    hub = SimpleNamespace(online=online, tagger=online.tagger, version=1, weights_id=0,
                          personalizer=Personalizer(weights, bow))
    return Scorer(hub, FakeStore(authored)), queries, library  # type: ignore[arg-type]


def full_capacity(scorer: Scorer, text: str, k: int, user_id: str | None) -> list:
    """The request path before: every row of the table scored, popularity per request."""
    online, personalizer = scorer.hub.online, scorer.hub.personalizer
    tokens = parse_post_text(text).tokens
    scores = online.tagger.scores([Post("", user_id, None, tokens, ())])
    past = scorer.store.authored(user_id) if user_id else []
    if past:
        history = AuthorHistory.of_posts((tags, words) for _, tags, words in past)
        key = (user_id, scorer.hub.version, len(past), past[-1][0])
        scores = personalizer.scores(online.tagger, scores, [tokens], [history], [key])
    return [(s.tag, s.score) for s in top_k(scores[0], online.tags, k)]


def timed(fn: Callable[[int], object], n: int, warm: bool = True) -> tuple[float, float]:
    """(median, p99) milliseconds per call of fn(0..n-1), after a warm-up on the same calls."""
    for i in range(n if warm else 0):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    ms = np.asarray(out) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 99))


def line(name: str, result: tuple[float, float]) -> None:
    print(f"  {name:<50} {result[0]:8.3f} ms  (p99 {result[1]:.3f})", flush=True)


def requests(scorer: Scorer, queries: list[Post], n: int) -> None:
    """Content-only requests, then personalized ones: each author's first request (their
    history's vectors not cached yet: the TF-IDF and model vectors of up to 200 past posts are
    computed) and again (cached, the steady state for returning authors)."""
    texts = [" ".join(p.tokens) for p in queries]
    users = [p.user_id for p in queries]

    def before(i: int, user: bool = False) -> object:
        return full_capacity(scorer, texts[i % len(texts)], 10, users[i % len(users)] if user
                             else None)

    def after(i: int, user: bool = False) -> object:
        return scorer.suggest(texts[i % len(texts)], 10, users[i % len(users)] if user
                              else None)

    print("no user:")
    line("full-capacity (the path before)", timed(before, n))
    line("served (Scorer.suggest)", timed(after, n))
    print("with the author's history:")
    scorer.hub.personalizer._past_vectors.clear()
    line("served, an author's first request", timed(lambda i: after(i, True), n, warm=False))
    line("full-capacity (the path before), history cached", timed(lambda i: before(i, True), n))
    line("served, history cached", timed(lambda i: after(i, True), n))


def parts_and_bf16(tagger: Tagger, queries: list[Post], n: int) -> None:
    model = tagger.model
    tokens = [p.tokens for p in queries]
    print("parts of the served path, and bf16 (torch, one query, one thread):")
    line("encode + score the tags in use (score_active)",
         timed(lambda i: tagger.score_active([tokens[i % len(tokens)]]), n))
    batches = [tagger._batch([t]) for t in tokens[:50]]
    with torch.no_grad():
        line("conv encoder fp32", timed(lambda i: model.embed_posts(*batches[i % 50]), n))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            line("conv encoder bf16 (autocast)",
                 timed(lambda i: model.embed_posts(*batches[i % 50]), n))
        q = torch.randn(1, model.config.dim)
        in_use = len(tagger.active_tags().rows)
        for rows in sorted({in_use, model.config.n_tags}):
            w = model.tag_emb.detach()[:rows]
            wb = w.to(torch.bfloat16)
            line(f"tag scores 1 x {rows} x {model.config.dim} fp32",
                 timed(lambda _, w=w: q @ w.T, n))
            line("  bf16, the table copied once (stale under Hogwild)",
                 timed(lambda _, wb=wb: (q.to(torch.bfloat16) @ wb.T).float(), n))
            line("  bf16, the live table converted per call",
                 timed(lambda _, w=w: (q.to(torch.bfloat16) @ w.to(torch.bfloat16).T).float(),
                       n))


def bf16_rankings(tagger: Tagger, queries: list[Post]) -> None:
    """How often the top 10 with a bf16 encoder (autocast), or bf16 everywhere, equals fp32's,
    and P@1 of each against the gold tags."""
    model = tagger.model
    rows = torch.from_numpy(tagger.active_tags().rows)
    same1 = dict.fromkeys(("bf16 encoder", "bf16 encoder + scores"), 0)
    same10, hits = dict(same1), dict.fromkeys(("fp32", *same1), 0)
    with torch.no_grad():
        for post in queries:
            ids, mask = tagger._batch([post.tokens])
            emb = model.embed_posts(ids, mask)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                emb16 = model.embed_posts(ids, mask).float()
            table16 = model.tag_emb.detach()[rows].to(torch.bfloat16)
            runs = {"fp32": model.score_all(emb, ids)[0, rows],
                    "bf16 encoder": model.score_all(emb16, ids)[0, rows],
                    "bf16 encoder + scores": (emb16.to(torch.bfloat16) @ table16.T)[0].float()}
            tops = {name: [int(rows[i]) for i in torch.argsort(-s, stable=True)[:10]]
                    for name, s in runs.items()}
            gold = set(tagger.tags.encode(post.tags))
            for name, top in tops.items():
                hits[name] += top[0] in gold
                if name != "fp32":
                    same1[name] += top[:1] == tops["fp32"][:1]
                    same10[name] += top == tops["fp32"]
    n = len(queries)
    print(f"bf16 against fp32 on {n} real posts (content ranking, P@1 on their gold tags: "
          f"fp32 {hits['fp32'] / n:.4f}):")
    for name in same1:
        print(f"  {name:<22} same top 1 {same1[name] / n:.3f}, same top 10 "
              f"{same10[name] / n:.3f}, P@1 {hits[name] / n:.4f}")


def exactness(scorer: Scorer, library: PersonalizedScorer, queries: list[Post]) -> None:
    """Served top 10 == the library's (``evaluate --personalize``), post by post."""
    same = 0
    for post in queries:
        tokens = parse_post_text(" ".join(post.tokens)).tokens
        row = library.scores([Post("q", post.user_id, None, tokens, ())])[0]
        expected = [s.tag for s in top_k(row, library.tags, 10)]
        served = [t for t, *_ in scorer.suggest(" ".join(post.tokens), 10, post.user_id)]
        same += served == expected
    print(f"served top 10 == evaluate --personalize top 10: {same} of {len(queries)} posts")


def open_vocabulary(scorer: Scorer, library: PersonalizedScorer, queries: list[Post],
                    folder: Path, n: int, check: int) -> None:
    """With open-vocabulary scorers (``daemon.open_vocab``): the per-request cost, and the
    served top 10 against the library's (``tagspace.open_vocab``, as scripts/open_vocab.py
    ranks: content rows and scorer without an author's past, personalized with one), post by
    post, with the P@1 / R@10 of what was served (every gold tag a possible hit)."""
    from daemon.open_vocab import OpenVocabRanking
    from tagspace.open_vocab import ListedColumns, candidates_for_row, open_metrics

    ranking = OpenVocabRanking.load(folder)
    served = Scorer(scorer.hub, scorer.store, ranking)
    texts = [" ".join(p.tokens) for p in queries]
    print(f"open vocabulary ({folder}):")
    line("served, no user", timed(lambda i: served.suggest(texts[i % len(texts)], 10, None), n))
    line("served, history cached", timed(lambda i: served.suggest(
        texts[i % len(texts)], 10, queries[i % len(queries)].user_id), n))
    columns = ListedColumns.of(library.tags.tokens)
    same, rankings = 0, []
    for post, text in zip(queries[:check], texts, strict=False):
        tokens = parse_post_text(text).tokens
        query = Post("q", post.user_id, None, tokens, ())
        history = library.profiles.get(post.user_id) if post.user_id else None
        mode = "personalized" if history is not None else "content"
        row = (library if history is not None else library.content).scores([query])[0]
        ranker = ranking.scorers[mode]
        expected = ranker.rank(candidates_for_row(tokens, row, columns, ranker.stats,
                                                  ranker.config, history), 10)
        got = [t for t, *_ in served.suggest(text, 10, post.user_id)]
        same += got == [t for t, _ in expected]
        rankings.append(got)
    gold = [p.tags for p in queries[: len(rankings)]]
    m = open_metrics(rankings, gold, frozenset(library.tags.tokens))
    print(f"served open-vocabulary top 10 == the library's: {same} of {len(rankings)} posts; "
          f"served P@1 {m.p_at_1:.4f}, R@10 {m.r_at_10:.4f} (known: {m.p_at_1_known:.4f} / "
          f"{m.r_at_10_known:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=19_000, help="tags in use (synthetic)")
    parser.add_argument("--capacity", type=int, default=100_000, help="tag table rows")
    parser.add_argument("--history", type=int, default=50, help="past posts (synthetic)")
    parser.add_argument("--model", type=Path, help="a `tagspace train` model (real mode)")
    parser.add_argument("--train", type=Path, help="the authors' past posts (real mode)")
    parser.add_argument("--valid", type=Path, help="query posts (real mode)")
    parser.add_argument("--check", type=int, default=1000, help="posts checked (real mode)")
    parser.add_argument("--n", type=int, default=300, help="timed requests per case")
    parser.add_argument("--profile", action="store_true", help="cProfile the served path")
    parser.add_argument("--open-vocab", type=Path, metavar="DIR",
                        help="also with these open-vocabulary scorers (scripts/open_vocab.py "
                        "--save; real mode)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the daemon's request threads (daemon/service.py)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    flags = open("/proc/cpuinfo").read()
    print(f"machine: {cpu} ({os.cpu_count()} cores, avx512_bf16 {'avx512_bf16' in flags}, "
          f"amx {'amx_bf16' in flags}), torch {torch.__version__} on 1 thread, numpy "
          f"{np.__version__}, python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    library = None
    if args.model:
        if not (args.train and args.valid):
            parser.error("--model needs --train and --valid")
        scorer, queries, library = real(args.model, args.train, args.valid, args.capacity)
    else:
        scorer, queries = synthetic(args.tags, args.capacity, args.history)
    tagger = scorer.hub.online.tagger
    users = {p.user_id for p in queries}
    sizes = [len(scorer.store.authored(u)) for u in users if u]
    c = tagger.model.config
    print(f"model: {len(tagger.active_tags().rows)} tags in use of {c.n_tags} rows, d={c.dim}, "
          f"H={c.hidden}, K={c.kernel}; {len(users)} authors, median history "
          f"{int(np.median(sizes)) if sizes else 0} posts (at most {MAX_HISTORY_POSTS}); k=10")
    requests(scorer, queries, args.n)
    parts_and_bf16(tagger, queries, args.n)
    if library is not None:
        exactness(scorer, library, queries[: args.check])
        bf16_rankings(tagger, queries[: args.check])
        if args.open_vocab:
            open_vocabulary(scorer, library, queries, args.open_vocab, args.n, args.check)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(args.n):
            post = queries[i % len(queries)]
            scorer.suggest(" ".join(post.tokens), 10, post.user_id)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
