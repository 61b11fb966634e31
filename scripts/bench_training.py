#!/usr/bin/env python
"""Training speed of the #TagSpace CNN step against this machine's measured matmul rates.

Measures, in one run and for each precision (fp32, and bf16 where the device has bf16 units or
--bf16 on), so that every ratio compares like with like:
1. the GEMM rate of that dtype (torch.mm, square matrices): the ceiling;
2. a plain PyTorch step of the CNN (nn.Embedding, autograd in the paper's order of operations,
   torch.optim.SGD; bf16 through autocast) with block WARP;
3. our Hogwild worker step (the fused window-max layer, sparse row updates, AdaGrad), with the
   batch built on the host (NumPy) and on the device (tagspace.packed_posts, as training does
   there);
4. posts/s of the Hogwild trainer with 1..N worker threads (on a GPU: 1 and 2, whole epochs of
   packed batches);
5. the sequential (paper) WARP sampler against the block version (CPU only).

--profile adds a torch.profiler breakdown of one step by kind of work (GEMMs, copies and casts,
tanh, max over time, row gather/scatter, AdaGrad, the rest), for our step and for the same step
with the encoder in the paper's order as autograd runs it (what the step was before
tagspace.window_max): ms per step, self time of the ops.

--device cuda: the same on a GPU (defaults: batch 16384, bf16); --profile there also lists the
ops by GPU time (torch.profiler's CUDA activity) and how much of the step's wall time the GPU
was busy.

Usage: python scripts/bench_training.py [--batch 256] [--length 24] [--dim 256] [--profile]
       [--device cuda] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from tagspace.batch import EncodedPosts, make_batch
from tagspace.hogwild import HogwildTrainer, HogwildWorker, TrainConfig
from tagspace.model import ConvEncoder, ModelConfig, TagSpaceModel
from tagspace.packed_posts import PackedPosts
from tagspace.precision import device_has_bf16
from tagspace.warp import block_warp_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# profiler op name -> kind of work (self time); what is not listed is "other ops"
KINDS = {
    "GEMMs": ("aten::mm", "aten::addmm", "aten::bmm"),
    "copies and casts": ("aten::copy_", "aten::clone", "aten::fill_", "aten::zero_",
                         "aten::unfold_backward", "aten::cat", "aten::_to_copy"),
    "tanh": ("aten::tanh", "aten::tanh_backward"),
    "max over time, mask": ("aten::amax", "aten::max", "aten::eq", "aten::masked_fill_",
                            "aten::mul", "aten::sum", "aten::div", "aten::where"),
    "row gather/scatter": ("aten::index", "aten::_index_put_impl_", "aten::index_add_",
                           "aten::scatter_add_", "aten::embedding_dense_backward",
                           "aten::_unique2", "aten::index_select"),
    "AdaGrad, in-place adds": ("aten::addcmul_", "aten::addcdiv_", "aten::sqrt", "aten::pow",
                               "aten::add_"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    runs, secs = timed(lambda: torch.mm(a, b), seconds, device)
    return 2 * n**3 * runs / secs / 1e9


def step_flops(cfg: ModelConfig, batch: int, windows: int, negatives: int) -> float:
    """Forward GEMM FLOPs x 3 (backward costs two more GEMMs of the same size)."""
    conv = 2 * batch * windows * cfg.kernel * cfg.dim * cfg.hidden
    out = 2 * batch * cfg.hidden * cfg.dim
    scores = 2 * batch * (negatives + 1) * cfg.dim
    return 3.0 * (conv + out + scores)


def timed(fn: Callable[[], Any], seconds: float, device: torch.device) -> tuple[int, float]:
    fn()  # warm-up
    sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        runs += 1
    sync(device)
    return runs, time.perf_counter() - start


def paper_order_forward(self: ConvEncoder, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder as autograd ran it before tagspace.window_max: tanh over every window, a
    masked amax, tanh, the output layer (bf16 through autocast)."""
    batch, windows = mask.shape
    x = x.unfold(1, self.kernel, 1).transpose(2, 3).reshape(batch, windows, -1)
    h = torch.tanh(self.conv(x)).masked_fill(~mask.unsqueeze(-1), -2.0).amax(dim=1)
    return self.out(self.dropout(torch.tanh(h)))


@contextlib.contextmanager
def paper_order() -> Iterator[None]:
    fused = ConvEncoder.forward
    ConvEncoder.forward = paper_order_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConvEncoder.forward = fused  # type: ignore[method-assign]


def autocast(device: torch.device, dtype: torch.dtype) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def plain_step_fn(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, ids, mask, pos,
                  negs, valid) -> Callable[[], None]:
    """The reference: a dense nn.Module step as a PyTorch user would write it."""
    model = TagSpaceModel(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with paper_order(), autocast(device, dtype):
            post = model.embed_posts(ids, mask).float()
        pos_scores = (post * model.tag_emb[pos]).sum(1)
        loss, _ = block_warp_loss(pos_scores, post @ model.tag_emb[negs].T, valid,
                                  cfg.n_tags, 0.1, len(negs))
        loss.backward()
        opt.step()

    return step


def profile_step(fn: Callable[[], Any], steps: int, device: torch.device) -> dict[str, float]:
    """ms per step by kind of work (self time of the ops), and the wall time not in any op."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    wall = (time.perf_counter() - start) / steps * 1e3
    kinds = {kind: 0.0 for kind in KINDS} | {"other ops": 0.0}
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), "other ops")
        kinds[kind] += event.self_cpu_time_total / 1e3 / steps
    kinds["outside ops (Python, NumPy)"] = max(0.0, wall - sum(kinds.values()))
    kinds["step (wall, profiled)"] = wall
    return {k: round(v, 2) for k, v in kinds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, help="posts per step (256 on the CPU, 16384 on a GPU)")
    p.add_argument("--length", type=int, default=24, help="words per post")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=1000)
    p.add_argument("--words", type=int, default=50_000)
    p.add_argument("--tags", type=int, default=20_000)
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="measure bf16 too: auto (where the device has bf16 units), on, off")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--profile", action="store_true", help="the step's time by kind of work")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (16_384 if on_gpu else 256)
    dtypes = ["fp32"]
    if args.bf16 == "on" or (args.bf16 == "auto" and device_has_bf16(args.device)):
        dtypes.append("bf16")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = ModelConfig(dim=args.dim, hidden=args.hidden, n_words=args.words, n_tags=args.tags)
    word_ids = [rng.integers(2, args.words, size=args.length) for _ in range(batch)]
    gold = [rng.integers(0, args.tags, size=2) for _ in range(batch)]
    ids, mask = (t.to(device) for t in make_batch(word_ids, cfg, 0, 1))
    windows = mask.shape[1]
    flops = step_flops(cfg, batch, windows, args.negatives)
    results: dict[str, Any] = {
        "machine": machine(device),
        "shape": {"batch": batch, "length": args.length, "dim": args.dim,
                  "hidden": args.hidden, "negatives": args.negatives, "windows": windows},
        "step_gflop": flops / 1e9,
    }
    print(results["machine"])
    pos = torch.from_numpy(np.array([g[0] for g in gold])).to(device)
    negs = torch.from_numpy(rng.integers(0, args.tags, size=args.negatives)).to(device)
    valid = torch.ones(batch, args.negatives, dtype=torch.bool, device=device)
    packed = PackedPosts(EncodedPosts(word_ids, gold, np.zeros(batch, np.int64)), cfg, 0, 1, device)
    all_rows = np.arange(batch)
    for name in dtypes:
        dtype = DTYPES[name]
        peak = matmul_gflops(device, dtype, min(args.seconds, 3.0))
        out: dict[str, Any] = {"matmul_gflops": peak}
        print(f"{name} matmul: {peak:.1f} GFLOP/s")
        worker = HogwildWorker(TagSpaceModel(cfg).to(device),
                               TrainConfig(negatives=args.negatives, bf16=bf16_choice(name)),
                               0, 0, 1)
        steps = {
            "plain_step": plain_step_fn(cfg, device, dtype, ids, mask, pos, negs, valid),
            "hogwild_step": lambda w=worker: w.step(word_ids, gold),
            "hogwild_step_packed": lambda w=worker: w.step_packed(packed.batch(all_rows)),
        }
        for step_name, fn in steps.items():
            runs, secs = timed(fn, args.seconds, device)
            rate, gflops = runs * batch / secs, runs * flops / secs / 1e9
            out[step_name] = {"posts_per_s": rate, "gflops": gflops, "of_matmul": gflops / peak}
            print(f"{name} {step_name}: {rate:.0f} posts/s, {gflops:.1f} GFLOP/s = "
                  f"{gflops / peak:.0%} of the {name} matmul")
        if args.profile:
            step = steps["hogwild_step"]
            with paper_order(), autocast(device, dtype):  # the step before window_max
                before = profile_step(step, 5, device)
            out["profile_ms_per_step"] = {"paper_order": before,
                                          "fused": profile_step(step, 5, device)}
            print_profile(name, out["profile_ms_per_step"])
            if on_gpu:
                out["gpu_profile_packed"] = gpu_profile(steps["hogwild_step_packed"], 5)
                print_gpu_profile(name, out["gpu_profile_packed"])
        out["hogwild_posts_per_s"] = hogwild_scaling(cfg, args, name, rng, device, batch)
        results[name] = out
    if not on_gpu:
        results["warp_posts_per_s_batch32"] = warp_samplers(cfg, args, word_ids, gold)
    if "bf16" in results:
        ratio = results["bf16"]["hogwild_step"]["posts_per_s"] / \
            results["fp32"]["hogwild_step"]["posts_per_s"]
        results["bf16_over_fp32_step"] = ratio
        print(f"bf16 step / fp32 step: x{ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


def bf16_choice(name: str) -> str:
    return "on" if name == "bf16" else "off"


def hogwild_scaling(cfg: ModelConfig, args: Any, name: str, rng: np.random.Generator,
                    device: torch.device, batch: int) -> dict[int, float]:
    """On the CPU the workers split a batch of ``batch`` posts; on a GPU each takes whole
    batches of ``batch`` (packed on the device), and 2 workers overlap one's host work with
    the other's kernels."""
    scaling: dict[int, float] = {}
    on_gpu = device.type == "cuda"
    n_posts = batch * 24
    data = EncodedPosts([rng.integers(2, args.words, size=args.length) for _ in range(n_posts)],
                        [rng.integers(0, args.tags, size=2) for _ in range(n_posts)],
                        np.zeros(n_posts, np.int64))
    for workers in range(1, (2 if on_gpu else args.max_workers) + 1):
        trainer = HogwildTrainer(TagSpaceModel(cfg).to(device), TrainConfig(
            epochs=1, workers=workers, batch_size=batch if on_gpu else batch // workers,
            negatives=args.negatives, bf16=bf16_choice(name), device=str(device)), 0, 1)
        trainer.fit(data, progress=False)  # warm-up epoch
        stats = trainer.fit(data, progress=False)[0]
        scaling[workers] = stats.examples / stats.seconds
        print(f"{name} Hogwild {workers} worker(s): {scaling[workers]:.0f} posts/s "
              f"(x{scaling[workers] / scaling[1]:.2f})")
    return scaling


def warp_samplers(cfg: ModelConfig, args: Any, word_ids: list[np.ndarray],
                  gold: list[np.ndarray]) -> dict[str, float]:
    out = {}
    small = word_ids[:32], gold[:32]
    for warp in ("block", "sequential"):
        worker = HogwildWorker(TagSpaceModel(cfg), TrainConfig(warp=warp, negatives=args.negatives,
                                                               bf16="off"), 0, 0, 1)
        runs, secs = timed(lambda w=worker: w.step(*small), args.seconds, torch.device("cpu"))
        out[warp] = runs * 32 / secs
        print(f"{warp} WARP, batch 32, fp32: {out[warp]:.0f} posts/s")
    return out


def gpu_profile(fn: Callable[[], Any], steps: int) -> dict[str, Any]:
    """The ops by GPU time (ms per step, self time) and the share of wall time the GPU was busy."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps * 1e3
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    # the kernels themselves (busy time); the aten ops that launched them carry the same time
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    ops = sorted(((e.key, e.self_device_time_total / 1e3 / steps) for e in events
                  if e.key.startswith("aten::")), key=lambda kv: -kv[1])
    busy = sum(e.self_device_time_total for e in kernels) / 1e3 / steps
    return {"wall_ms": round(wall, 2), "gpu_busy_ms": round(busy, 2),
            "top_ops_ms": {k: round(ms, 3) for k, ms in ops[:16]}}


def print_gpu_profile(name: str, prof: dict[str, Any]) -> None:
    print(f"{name} packed step on the GPU: {prof['wall_ms']} ms wall, GPU busy "
          f"{prof['gpu_busy_ms']} ms; top ops by GPU time (ms per step):")
    for op, ms in prof["top_ops_ms"].items():
        print(f"  {op[:60]:60s} {ms:8.3f}")


def print_profile(name: str, profiles: dict[str, dict[str, float]]) -> None:
    before, after = profiles["paper_order"], profiles["fused"]
    print(f"{name} step by kind of work, ms per step (paper order -> fused window max):")
    for kind in before:
        print(f"  {kind:32s} {before[kind]:8.2f} -> {after[kind]:8.2f}")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    return (f"{model} ({platform.machine()}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
