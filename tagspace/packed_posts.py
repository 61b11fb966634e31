"""Training posts packed into tensors on the model's device, so a step's batch is one gather.

At a GPU's batch size (16,384 posts) building each batch on the host (padding the id arrays in
Python, a positive per post through NumPy, the (B, S) mask of draws that are a post's own tags)
took about 50 ms a step on an H200 machine, while the GPU's kernels for the step took less: the
GPU waited for the host (scripts/bench_training.py --device cuda --profile; docs/PERFORMANCE.md).
Packed once per ``fit``, a batch is a row gather, its positives one random draw per row and its
mask a comparison, all on the device, and the host only picks row indices. Batches group posts of
similar length (``PackedPosts.epoch``), so that they are not padded to the longest post.

The batches are the ones ``make_batch`` builds: ids padded to the batch's longest post with the
paper's boundary padding, one mask entry per window. The host keeps the lengths, so the batch's
width is known without asking the device (no synchronisation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tagspace.batch import EncodedPosts
from tagspace.model import ModelConfig

BUCKET_BATCHES = 50  # batches sorted by length together (``PackedPosts.epoch``)


@dataclass
class DeviceBatch:
    """A batch on the device: (B, L) ids, (B, W) window mask, (B, G) known tags padded with -1."""

    ids: torch.Tensor
    mask: torch.Tensor
    gold: torch.Tensor
    n_gold: np.ndarray  # (B,) on the host: known tags per post

    def __len__(self) -> int:
        return len(self.n_gold)

    def not_gold(self, negs: torch.Tensor) -> torch.Tensor:
        """(B, S): True where draw j is not one of post i's known tags."""
        valid = torch.ones(len(self), len(negs), dtype=torch.bool, device=negs.device)
        for g in range(self.gold.shape[1]):  # a few columns: no (B, G, S) temporary
            valid &= self.gold[:, g : g + 1] != negs.unsqueeze(0)
        return valid


class PackedPosts:
    """The posts with >= 1 known tag, as (N, L_max) ids and (N, G_max) tags on ``device``."""

    def __init__(self, data: EncodedPosts, config: ModelConfig, pad_id: int, unk_id: int,
                 device: torch.device | str):
        usable = np.flatnonzero([len(t) > 0 for t in data.tags])
        if len(usable) == 0:
            raise ValueError("no training post has a known tag")
        seqs = [data.words[i] if len(data.words[i]) else np.asarray([unk_id], np.int64)
                for i in usable]
        tags = [data.tags[i] for i in usable]
        pad = config.pad
        self.width = config.kernel - 1 if config.encoder == "conv" else 0
        self.lengths = np.fromiter((len(s) + 2 * pad for s in seqs), np.int64, len(seqs))
        self.n_gold = np.fromiter((len(t) for t in tags), np.int64, len(tags))
        self.device = torch.device(device)
        self.ids = torch.from_numpy(_pad_rows(seqs, int(self.lengths.max()), pad, pad_id))
        self.gold = torch.from_numpy(_pad_rows(tags, int(self.n_gold.max()), 0, -1))
        self.ids, self.gold = self.ids.to(self.device), self.gold.to(self.device)

    def __len__(self) -> int:
        return len(self.lengths)

    def epoch(self, rng: np.random.Generator, batch_size: int,
              bucket: int = BUCKET_BATCHES) -> Iterator[DeviceBatch]:
        """Every post once, in batches of similar length, the batches in random order.

        A batch is as wide as its longest post, and a random batch of 16,384 tweets holds
        nearly the longest one of the data set (tweets: mean 11 tokens, up to 128), so most of
        its convolution windows would be padding. As fairseq and tensor2tensor batch text, a
        shuffled span of ``bucket`` batches is sorted by length and cut into batches."""
        order = rng.permutation(len(self))
        batches: list[np.ndarray] = []
        span = batch_size * bucket
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for k in rng.permutation(len(batches)):
            yield self.batch(batches[k])

    def batch(self, rows: np.ndarray) -> DeviceBatch:
        """The batch of packed rows ``rows`` (host indices into the usable posts)."""
        total = max(int(self.lengths[rows].max()), self.width + 1)
        index = torch.from_numpy(rows).to(self.device, non_blocking=True)
        ids = self.ids[index, :total]
        lengths = torch.from_numpy(self.lengths[rows] - self.width).to(self.device)
        windows = torch.arange(total - self.width, device=self.device)
        mask = windows.unsqueeze(0) < lengths.unsqueeze(1)
        n_gold = self.n_gold[rows]
        return DeviceBatch(ids, mask, self.gold[index, : int(n_gold.max())], n_gold)


def _pad_rows(rows: list[np.ndarray], width: int, offset: int, fill: int) -> np.ndarray:
    """Rows of different lengths into one (N, width) array from column ``offset``, ``fill``
    around them (vectorised: one scatter, not a Python loop per row)."""
    out = np.full((len(rows), width), fill, np.int64)
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    if len(rows):
        flat = np.concatenate(rows)
        row_of = np.repeat(np.arange(len(rows)), lengths)
        col_of = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + offset
        out[row_of, col_of] = flat
    return out
