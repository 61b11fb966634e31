"""Which float format the encoder runs in: bfloat16 where the CPU multiplies it natively.

On CPUs with AVX512-BF16 or AMX, oneDNN runs bf16 matmuls about 3x faster than fp32 (one
2048 x 2048 run here: 367 vs 118 GFLOP/s). bf16 keeps 8 bits of mantissa, so an embedding
computed under bf16 autocast is close to the fp32 one but not equal (cosine >= 0.99998 on
howyoutagtweets, ``scripts/bench_encode.py``): use it where throughput matters more than
bit-equality with an fp32 evaluation.
"""

from __future__ import annotations

CHOICES = ("auto", "on", "off")


def cpu_has_bf16() -> bool:
    """oneDNN has native bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    import torch  # here: settings name the choices without loading torch

    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(choice: str) -> bool:
    """``auto``: where the CPU has bf16 units; ``on``; ``off`` (fp32)."""
    if choice not in CHOICES:
        raise ValueError(f"bf16 must be one of {', '.join(CHOICES)}, got {choice!r}")
    return choice == "on" or (choice == "auto" and cpu_has_bf16())
