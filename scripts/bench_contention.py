#!/usr/bin/env python
"""Does work on one core slow a serving-like loop on the other? (hardware sharing between vCPUs)

A serving-like loop (the suggest route's tag scores and top 10 over 21k x 64 tags, the feed's
max-over-history scan of 54k bf16 candidates and its top 20; one torch thread) is timed pinned
to CPU 0, alone and then beside a co-runner pinned to CPU 1 at SCHED_IDLE: a pure-Python spin,
an fp32 GEMM loop (AVX-512), a bf16 GEMM loop (AMX where the CPU has it) and a memory-copy loop
(256 MB arrays). The kernel gives CPU 1 to the co-runner only, so any slowdown of the loop is
what the two vCPUs share underneath (a physical core, its caches, memory bandwidth, clocks).

Usage: python scripts/bench_contention.py [--iterations 400] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CO_RUNNERS = {
    "python spin": "x = 0\nwhile True: x += 1",
    "fp32 GEMM": "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n"
                 "while True: torch.mm(a, a)",
    "bf16 GEMM": "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024).bfloat16()\n"
                 "while True: torch.mm(a, a)",
    "memory copy": "import numpy as np\na = np.ones(32_000_000); b = np.empty_like(a)\n"
                   "while True: np.copyto(b, a)",
}


def serving_loop(iterations: int) -> dict[str, float]:
    import numpy as np
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    tags, queries = torch.randn(21_000, 64), torch.randn(10, 64)
    candidates, history = torch.randn(54_000, 64).bfloat16(), torch.randn(50, 64).bfloat16()
    times = []
    for _ in range(iterations + 50):
        start = time.perf_counter()
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
    results = {"alone": serving_loop(args.iterations)}
    print(f"alone: {results['alone']}")
    for name, code in CO_RUNNERS.items():
        prelude = "import os\nos.sched_setaffinity(0, {1})\n" \
                  "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        other = subprocess.Popen([sys.executable, "-c", prelude + code])
        try:
            time.sleep(2.0)  # the co-runner up to speed
            results[name] = serving_loop(args.iterations)
        finally:
            other.kill()
            other.wait()
        print(f"beside {name}: {results[name]}")
    results["alone, again"] = serving_loop(args.iterations)
    print(f"alone, again: {results['alone, again']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
