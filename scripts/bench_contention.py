#!/usr/bin/env python
"""Does work on one core slow a serving-like loop on the other? (hardware sharing between vCPUs)

A serving-like loop (the suggest route's tag scores and top 10 over 21k x 64 tags, the feed's
max-over-history scan of 54k bf16 candidates and its top 20; one torch thread) is timed pinned
to CPU 0, alone and then beside a co-runner pinned to CPU 1 at SCHED_IDLE: a pure-Python spin,
an fp32 GEMM loop (AVX-512), a bf16 GEMM loop (AMX where the CPU has it), a memory-copy loop
(256 MB arrays), and a Hogwild-like writer: in-place updates of the weights the loop reads (the
convolution's 1000 x 320 and 500 random tag rows a step), shared pages as the daemon's trainer
and serving process share them. The kernel gives CPU 1 to the co-runner only, so any slowdown of
the loop is what the two vCPUs share underneath (a physical core, its caches, memory bandwidth,
clocks) or, for the writer, the cache lines it takes from the loop.

Usage: python scripts/bench_contention.py [--iterations 400] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CO_RUNNERS = {
    "python spin": "x = 0\nwhile True: x += 1",
    "fp32 GEMM": "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n"
                 "while True: torch.mm(a, a)",
    "bf16 GEMM": "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024).bfloat16()\n"
                 "while True: torch.mm(a, a)",
    "memory copy": "import numpy as np\na = np.ones(32_000_000); b = np.empty_like(a)\n"
                   "while True: np.copyto(b, a)",
    "Hogwild writer": "import numpy as np\nfrom bench_contention import shared_weights\n"
                      "tags, conv = shared_weights('r+')\nrng = np.random.default_rng(0)\n"
                      "while True:\n    conv += 1e-7\n"
                      "    tags[rng.integers(0, len(tags), 500)] += 1e-7",
}
SHM = "/dev/shm/tagspace-bench-contention"


def shared_weights(mode: str) -> tuple:
    """The tag matrix and the convolution's weights, in pages both processes map."""
    tags = np.memmap(SHM + ".tags", np.float32, mode, shape=(21_000, 64))
    conv = np.memmap(SHM + ".conv", np.float32, mode, shape=(1_000, 320))
    return tags, conv


def serving_loop(iterations: int) -> dict[str, float]:
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    shared_tags, shared_conv = shared_weights("r+")
    tags, conv = torch.from_numpy(shared_tags), torch.from_numpy(shared_conv)
    queries, windows = torch.randn(10, 64), torch.randn(12, 320)
    candidates, history = torch.randn(54_000, 64).bfloat16(), torch.randn(50, 64).bfloat16()
    times = []
    for _ in range(iterations + 50):
        start = time.perf_counter()
        torch.tanh(windows @ conv.T).amax(0)  # one post's convolution
        torch.topk(queries @ tags.T, 10, dim=1)
        torch.topk((history @ candidates.T).amax(0), 20)
        times.append(time.perf_counter() - start)
    ms = np.array(times[50:]) * 1e3
    return {"median_ms": round(float(np.median(ms)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs")
    tags, conv = shared_weights("w+")
    tags[:], conv[:] = np.random.default_rng(1).standard_normal(tags.shape), 0.01
    tags.flush(), conv.flush()
    results = {"alone": serving_loop(args.iterations)}
    print(f"alone: {results['alone']}")
    for name, code in CO_RUNNERS.items():
        prelude = "import os\nos.sched_setaffinity(0, {1})\n" \
                  "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        results[f"alone, before {name}"] = serving_loop(args.iterations)
        other = subprocess.Popen([sys.executable, "-c", prelude + code],
                                 env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
        try:
            time.sleep(2.0)  # the co-runner up to speed
            results[name] = serving_loop(args.iterations)
        finally:
            other.kill()
            other.wait()
        print(f"alone: {results[f'alone, before {name}']}, beside {name}: {results[name]}")
    results["alone, again"] = serving_loop(args.iterations)
    print(f"alone, again: {results['alone, again']}")
    for suffix in (".tags", ".conv"):
        os.unlink(SHM + suffix)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
