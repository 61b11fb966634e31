#!/usr/bin/env python
"""CPU time of the daemon's checkpoint (``ModelHub.checkpoint``) at its default capacities.

The daemon writes a checkpoint every ``checkpoint_interval_s`` in its own process: a burst of
CPU that competes with serving on a small machine. This loads a model directory as the daemon
does (grown to the configured capacities: 200k words, 100k tags), writes one checkpoint to warm
up, then times ``--repeats`` more (process CPU time, so I/O waits are not counted).

Usage: python scripts/bench_checkpoint.py --model runs/q-d64-bf16off [--repeats 6]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from daemon.config import Settings
from daemon.model_hub import ModelHub


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a `tagspace train` output")
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagspace-ckpt-") as tmp:
        model_dir = Path(tmp) / "model"
        shutil.copytree(args.model, model_dir)
        hub = ModelHub.from_settings(Settings(model_dir=str(model_dir)))
        hub.checkpoint()
        cpu = []
        for _ in range(args.repeats):
            start = time.process_time()
            hub.checkpoint()
            cpu.append(time.process_time() - start)
    print("CPU s per checkpoint:", " ".join(f"{x:.3f}" for x in cpu),
          f"(median {statistics.median(cpu):.3f})")


if __name__ == "__main__":
    main()
