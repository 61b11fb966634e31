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


def device_has_bf16(device: str) -> bool:
    """The device multiplies bf16 natively: a CPU with bf16 units, or a CUDA GPU that has them
    (Ampere and newer)."""
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


def use_bf16(choice: str, device: str = "cpu") -> bool:
    """``auto``: where the device has bf16 units; ``on``; ``off`` (fp32)."""
    check_choice(choice)
    return choice == "on" or (choice == "auto" and device_has_bf16(device))


def check_choice(choice: str) -> None:
    if choice not in CHOICES:
        raise ValueError(f"bf16 must be one of {', '.join(CHOICES)}, got {choice!r}")
