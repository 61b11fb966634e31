#!/usr/bin/env python
"""Training speed of the #TagSpace CNN step against this machine's measured matmul rate.

Measures, in one run (ratios are what to compare across machines):
1. the fp32 GEMM rate (torch.mm, square matrices): the ceiling;
2. a plain PyTorch step of the CNN (nn.Embedding, autograd, torch.optim.SGD) with block WARP;
3. our Hogwild worker step (sparse row updates, AdaGrad) on the same batch;
4. posts/s of the Hogwild trainer with 1..N worker threads;
5. the sequential (paper) WARP sampler against the block version.

Usage: python scripts/bench_training.py [--batch 256] [--length 24] [--dim 256] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from tagspace.batch import EncodedPosts, make_batch
from tagspace.hogwild import HogwildTrainer, HogwildWorker, TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.warp import block_warp_loss


def matmul_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e9


def step_flops(cfg: ModelConfig, batch: int, windows: int, negatives: int) -> float:
    """Forward GEMM FLOPs x 3 (backward costs two more GEMMs of the same size)."""
    conv = 2 * batch * windows * cfg.kernel * cfg.dim * cfg.hidden
    out = 2 * batch * cfg.hidden * cfg.dim
    scores = 2 * batch * (negatives + 1) * cfg.dim
    return 3.0 * (conv + out + scores)


def timed(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return runs, time.perf_counter() - start


def plain_step_fn(cfg: ModelConfig, ids, mask, pos, negs, valid):
    """The reference: a dense nn.Module step as a PyTorch user would write it."""
    model = TagSpaceModel(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        post = model.embed_posts(ids, mask)
        pos_scores = (post * model.tag_emb[pos]).sum(1)
        loss, _ = block_warp_loss(pos_scores, post @ model.tag_emb[negs].T, valid,
                                  cfg.n_tags, 0.1, len(negs))
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--length", type=int, default=24, help="words per post")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=1000)
    p.add_argument("--words", type=int, default=50_000)
    p.add_argument("--tags", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = ModelConfig(dim=args.dim, hidden=args.hidden, n_words=args.words, n_tags=args.tags)
    word_ids = [rng.integers(2, args.words, size=args.length) for _ in range(args.batch)]
    gold = [rng.integers(0, args.tags, size=2) for _ in range(args.batch)]
    ids, mask = make_batch(word_ids, cfg, 0, 1)
    windows = mask.shape[1]
    flops = step_flops(cfg, args.batch, windows, args.negatives)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "shape": {"batch": args.batch, "length": args.length, "dim": args.dim,
                  "hidden": args.hidden, "negatives": args.negatives, "windows": windows},
        "step_gflop": flops / 1e9,
    }
    peak = matmul_gflops()
    results["matmul_gflops"] = peak
    print(f"fp32 matmul: {peak:.1f} GFLOP/s ({results['machine']})")

    pos = torch.from_numpy(np.array([g[0] for g in gold]))
    negs = torch.from_numpy(rng.integers(0, args.tags, size=args.negatives))
    valid = torch.ones(args.batch, args.negatives, dtype=torch.bool)
    worker = HogwildWorker(TagSpaceModel(cfg), TrainConfig(negatives=args.negatives), 0, 0, 1)
    for name, fn in (
        ("plain_step", plain_step_fn(cfg, ids, mask, pos, negs, valid)),
        ("hogwild_step", lambda: worker.step(word_ids, gold)),
    ):
        runs, secs = timed(fn, args.seconds)
        rate = runs * args.batch / secs
        gflops = runs * flops / secs / 1e9
        results[name] = {"posts_per_s": rate, "gflops": gflops, "of_matmul": gflops / peak}
        print(f"{name}: {rate:.0f} posts/s, {gflops:.1f} GFLOP/s = {gflops / peak:.0%} of matmul")

    scaling = {}
    n_posts = args.batch * 24
    data = EncodedPosts([rng.integers(2, args.words, size=args.length) for _ in range(n_posts)],
                        [rng.integers(0, args.tags, size=2) for _ in range(n_posts)],
                        np.zeros(n_posts, np.int64))
    for workers in range(1, args.max_workers + 1):
        model = TagSpaceModel(cfg)
        trainer = HogwildTrainer(model, TrainConfig(epochs=1, workers=workers,
                                                    batch_size=args.batch // workers), 0, 1)
        trainer.fit(data, progress=False)  # warm-up epoch
        stats = trainer.fit(data, progress=False)[0]
        scaling[workers] = stats.examples / stats.seconds
        print(f"Hogwild {workers} worker(s): {scaling[workers]:.0f} posts/s "
              f"(x{scaling[workers] / scaling[1]:.2f})")
    results["hogwild_posts_per_s"] = scaling

    small = word_ids[:32], gold[:32]
    for warp in ("block", "sequential"):
        worker = HogwildWorker(TagSpaceModel(cfg), TrainConfig(warp=warp, negatives=args.negatives),
                               0, 0, 1)
        runs, secs = timed(lambda w=worker: w.step(*small), args.seconds)
        results[f"{warp}_warp_posts_per_s_batch32"] = runs * 32 / secs
        print(f"{warp} WARP, batch 32: {runs * 32 / secs:.0f} posts/s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
