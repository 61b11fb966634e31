"""Posts as id arrays, and padded (ids, mask) batches for the encoders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tagspace.dataset import Post
from tagspace.model import ModelConfig
from tagspace.vocab import PAD, UNK, Vocabulary

MAX_TOKENS = 128  # longer posts are truncated: a post, not a document
EMBED_BATCH = 64  # posts per forward when embedding many (grouped by length: ``length_groups``)


@dataclass
class EncodedPosts:
    """Word ids (unknown words -> <unk>) and known tag ids per post."""

    words: list[np.ndarray]
    tags: list[np.ndarray]
    n_unknown_tags: np.ndarray  # gold tags per post that the tag vocabulary does not know

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def encode(cls, posts: Sequence[Post], words: Vocabulary, tags: Vocabulary) -> EncodedPosts:
        unk = words.index(UNK)
        word_ids, tag_ids, unknown = [], [], []
        for post in posts:
            word_ids.append(np.asarray(words.encode(post.tokens[:MAX_TOKENS], unk), np.int64))
            known = tags.encode(post.tags)
            tag_ids.append(np.asarray(known, np.int64))
            unknown.append(len(post.tags) - len(known))
        return cls(word_ids, tag_ids, np.asarray(unknown, np.int64))


def make_batch(
    word_ids: Sequence[np.ndarray], config: ModelConfig, pad_id: int, unk_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch: (ids (B, L), mask (B, W)) with W = L - K + 1 windows for the CNN.

    Each post gets ``config.pad`` padding vectors at both ends (the paper's boundary padding,
    so each word centres a window); shorter posts are right-filled with the same id and their
    extra windows masked out. An empty post reads as a single <unk>.
    """
    pad = config.pad
    seqs = [ids if len(ids) else np.asarray([unk_id], np.int64) for ids in word_ids]
    lengths = np.fromiter((len(s) + 2 * pad for s in seqs), np.int64, len(seqs))
    width = config.kernel - 1 if config.encoder == "conv" else 0
    total = max(int(lengths.max()), width + 1)
    ids = np.full((len(seqs), total), pad_id, np.int64)
    for row, seq in enumerate(seqs):
        ids[row, pad : pad + len(seq)] = seq
    windows = total - width
    mask = np.arange(windows)[None, :] < (lengths - width)[:, None]
    return torch.from_numpy(ids), torch.from_numpy(mask)


def length_groups(lengths: Sequence[int], size: int = EMBED_BATCH) -> list[np.ndarray]:
    """Indices in groups of ``size`` posts of similar length. A batch is padded to its longest
    post, so batches in arrival order run the convolution mostly over padding (tweets: mean 11
    tokens, a batch of 500 padded to ~80); by length, the windows computed are nearly the real
    ones. 64 was fastest on this CPU (``scripts/bench_encode.py``)."""
    order = np.argsort(np.asarray(lengths, np.int64), kind="stable")
    return [order[i : i + size] for i in range(0, len(order), size)]


def special_ids(words: Vocabulary) -> tuple[int, int]:
    return words.index(PAD), words.index(UNK)
