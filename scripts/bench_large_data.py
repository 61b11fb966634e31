#!/usr/bin/env python
"""`tagspace train` on 1M+ posts: posts/s and peak memory, streamed (--stream) and in memory.

The data is howyoutagtweets' train.csv repeated --copies times into one file (about 1.06M posts
at the default 50): fine for throughput and memory, meaningless for quality (the same 21k posts
over and over). Each run is `tagspace train` in a child process, one epoch of #TagSpace from a
random start (no WSABIE pass, so the figure is one pass of the data), and its peak resident
memory comes from the kernel (wait4's ru_maxrss of that child alone). Posts/s is the epoch's
own figure from the training log; the wall time includes reading the file for the
vocabularies (and, in memory, holding every post).

Usage: python scripts/bench_large_data.py [--copies 50] [--dim 64] [--batch-size 256]
       [--device cuda] [--json docs/results/large-data/large-data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HYT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "howyoutagtweets"
EPOCH_LINE = re.compile(r"tagspace epoch \d+/\d+: loss [\d.]+, (\d+) posts/s")


def replicate(source: Path, copies: int, out: Path) -> int:
    with out.open("wb") as f:
        for _ in range(copies):
            with source.open("rb") as src:
                shutil.copyfileobj(src, f)
    return sum(1 for _ in out.open("rb"))


def run_train(data: Path, out: Path, args: argparse.Namespace, stream: bool) -> dict[str, object]:
    # the library's own CLI (`tagspace train` without the daemon's imports): runs where only
    # the model library's needs are installed, a GPU machine's image for one
    cmd = [sys.executable, "-m", "tagspace.cli", "train", "--data", str(data), "--out",
           str(out), "--dim", str(args.dim), "--epochs", "1", "--init", "random",
           "--batch-size", str(args.batch_size), "--min-word-count", "1",
           "--device", args.device, "--workers", str(args.workers)]
    if stream:
        cmd += ["--stream", "--shuffle-buffer", str(args.shuffle_buffer)]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the others'
    wall = time.perf_counter() - start
    output = log.read_text()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    rates = [int(m.group(1)) for m in EPOCH_LINE.finditer(output)]
    return {"mode": "stream" if stream else "memory", "command": " ".join(cmd),
            "epoch_posts_per_s": rates[-1] if rates else None, "wall_s": round(wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=HYT / "train.csv", help="file to repeat")
    p.add_argument("--copies", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shuffle-buffer", type=int, default=100_000)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="Hogwild threads")
    p.add_argument("--modes", default="stream,memory", help="stream, memory or both, in order")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="tagspace-large-") as tmp:
        data = Path(tmp) / "train.csv"
        lines = replicate(args.data, args.copies, data)
        print(f"{lines:,} lines ({data.stat().st_size / 2**20:.0f} MiB) in {data}")
        results = {"machine": f"{platform.node()}, {os.cpu_count()} cores, {args.device}",
                   "data": f"{args.data.name} x {args.copies}", "lines": lines, "runs": []}
        for mode in args.modes.split(","):
            run = run_train(data, Path(tmp) / f"model-{mode}", args, mode == "stream")
            print(f"{mode}: {run['epoch_posts_per_s']} posts/s in the epoch, "
                  f"{run['wall_s']} s in all, peak RSS {run['peak_rss_mib']} MiB")
            results["runs"].append(run)  # type: ignore[attr-defined]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
