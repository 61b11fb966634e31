"""The convolution over word windows and the max over time, as one autograd function.

The paper's layer is tanh(max_t(tanh(W x_t + b))). tanh is increasing, so the max can be taken
before it and the bias added after it (b does not depend on t):

    max_t tanh(W x_t + b) = tanh(max_t(W x_t) + b),

which computes the same embedding while tanh, its backward and the bias run on (B, H) values
instead of (B, W, H). Autograd's own graph of the paper's order spent more time outside the GEMMs
than in them under bf16 (scripts/bench_training.py --profile; docs/PERFORMANCE.md): casts and
copies of (B, W, H) tensors, a tanh and its backward over every window, and an amax backward
made of three full passes. Here the only (B, W, H) work besides the GEMMs is the mask, finding
where each maximum is, and the gradient spread onto those places. Where depends on the device
(docs/PERFORMANCE.md): on the CPU a vectorised amax and one comparison that marks the maxima
(the CPU's max with indices took 7x the amax in bf16), on a GPU the max with indices and the
gradient scattered onto them (the comparison and the multiply by its mask took 2 of the 15 ms
of a batch-16,384 step's kernels on an H200).

``dtype``: the GEMMs run in it (bfloat16 on CPUs with bf16 units, ``tagspace.precision``); the
inputs, the outputs and the gradients stay in the caller's dtype, so the lookup tables'
gradients are summed in fp32 (a word repeated in a batch adds up many window gradients).
A tie between windows sends the gradient to each of them on the CPU, to one on a GPU (ties have
probability ~0 in practice).
Where no gradient is wanted (serving, ingestion) ``plain_window_max`` computes the same with plain
ops: the function's machinery and a weight cast per call cost a one-post encode 30-190 us.
"""

from __future__ import annotations

from typing import Any

import torch


def indexed_max(device: torch.device) -> bool:
    """Find the maxima with their window indices (GPUs) rather than by comparison (CPUs)."""
    return device.type != "cpu"


class WindowMax(torch.autograd.Function):
    """(B, L, d) vectors, (B, W) mask, (H, K*d) weight, (H,) bias -> (B, H): max_t(W x_t) + b."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, kernel: int, dtype: torch.dtype) -> torch.Tensor:
        batch, windows = mask.shape
        # (B, W, K*d): the windows side by side, so the convolution is one GEMM
        win = x.to(dtype).unfold(1, kernel, 1).transpose(2, 3).reshape(batch * windows, -1)
        w = weight.to(dtype)
        z = torch.mm(win, w.T).view(batch, windows, -1)  # (B, W, H)
        if not bool(mask.all()):  # posts of one length (a length-grouped batch) have none
            z.masked_fill_(~mask.unsqueeze(-1), float("-inf"))  # padding windows: never the max
        if indexed_max(z.device):  # one pass that also says which window each maximum is
            top, where = z.max(dim=1)
        else:  # a vectorised amax; a (B, W, H) bool marks the maxima, if a gradient is wanted
            top, where = z.amax(dim=1), None
        if any(ctx.needs_input_grad):
            if where is None:
                where = z == top.unsqueeze(1)
            ctx.save_for_backward(win, w, where)
            ctx.shape = (x.shape, kernel, windows)
        return top.to(x.dtype) + bias

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        win, w, where = ctx.saved_tensors
        x_shape, kernel, windows = ctx.shape
        batch, hidden = grad.shape
        # the gradient of each maximum, on the window it came from
        if where.dtype == torch.bool:
            g = where * grad.to(w.dtype).unsqueeze(1)
        else:  # window indices: a scatter into zeros
            g = torch.zeros(batch, windows, hidden, dtype=w.dtype, device=grad.device)
            g.scatter_(1, where.unsqueeze(1), grad.to(w.dtype).unsqueeze(1))
        g = g.view(batch * windows, hidden)
        grad_weight = torch.mm(g.T, win).to(grad.dtype) if ctx.needs_input_grad[2] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            per_window = torch.mm(g, w).view(batch, windows, kernel, -1)  # (B, W, K, d)
            # in the GEMMs' dtype (K terms a vector; converting each strided slice cost more)
            folded = torch.zeros(x_shape, dtype=w.dtype, device=grad.device)
            for k in range(kernel):  # window t's k-th vector is x_{t+k}
                folded[:, k : k + windows] += per_window[:, :, k]
            grad_x = folded.to(grad.dtype)
        return grad_x, None, grad_weight, grad_bias, None, None


def window_max(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               kernel: int, dtype: torch.dtype) -> torch.Tensor:
    out: torch.Tensor = WindowMax.apply(x, mask, weight, bias, kernel, dtype)
    return out


def plain_window_max(x: torch.Tensor, mask: torch.Tensor, conv: torch.nn.Linear, kernel: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """``window_max`` where no gradient is needed: plain ops, so an enclosing autocast region
    casts (and caches) the weights as it does for any ``nn.Linear``."""
    batch, windows = mask.shape
    if dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, dtype=dtype):
            return plain_window_max(x, mask, conv, kernel, dtype)
    win = x.unfold(1, kernel, 1).transpose(2, 3).reshape(batch, windows, -1)
    z = torch.nn.functional.linear(win, conv.weight)  # (B, W, H), the bias after the max
    if not bool(mask.all()):
        z = z.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return z.amax(dim=1).to(x.dtype) + conv.bias
