"""The #TagSpace scoring function f(w, t) = e_conv(w) . e_lt(t) and the WSABIE baseline.

#TagSpace (paper section 3): lookup table -> convolution over windows of K words with H filters
-> tanh -> max over time -> tanh -> linear H x d. WSABIE (section 4.2): the mean of the post's
word vectors. Both score a tag by the dot product with the tag's own d-dim lookup-table row.

Encoders take already looked-up word vectors so that Hogwild workers can gather just the rows
a batch touches and update them sparsely (see ``tagspace.hogwild``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from tagspace.window_max import plain_window_max, window_max

ENCODERS = ("conv", "bag")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "conv"  # "conv" = #TagSpace, "bag" = WSABIE
    dim: int = 256  # d: word, tag and post embedding size
    kernel: int = 5  # K: words per convolution window
    hidden: int = 1000  # H: convolution filters
    dropout: float = 0.0  # on the H-dim max-pooled features, training only
    n_words: int = 2  # word vocabulary size, specials included
    n_tags: int = 1
    init_scale: float = 0.1  # lookup tables start as N(0, init_scale^2 / d)
    # A tag that is also a word of the post gets a learned bonus: f(w, t) += beta * [t in w].
    word_tag_share: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        for name in ("dim", "kernel", "hidden", "n_words", "n_tags"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def pad(self) -> int:
        """Padding vectors at each end: every word is the centre of one window."""
        return self.kernel // 2 if self.encoder == "conv" else 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ConvEncoder(nn.Module):
    """Post embedding of the paper's Figure 1, from looked-up word vectors."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kernel = config.kernel
        # K*d x H weights and H biases
        self.conv = nn.Linear(config.kernel * config.dim, config.hidden)
        self.out = nn.Linear(config.hidden, config.dim)  # H x d
        self.dropout = nn.Dropout(config.dropout)
        # The convolution's GEMMs run in this dtype (bfloat16: ``tagspace.precision``); an
        # enclosing autocast region overrides it. Not saved: a property of the machine.
        self.compute_dtype = torch.float32

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d) vectors, boundary padding included; mask: (B, W) valid windows."""
        # tanh(max over time of tanh(conv)), with the max taken first (``tagspace.window_max``)
        if torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad):
            dtype = self.compute_dtype
            if torch.is_autocast_enabled(x.device.type):
                dtype = torch.get_autocast_dtype(x.device.type)
            h = window_max(x, mask, self.conv.weight, self.conv.bias, self.kernel, dtype)
        else:  # inference: the same function without autograd's machinery (30 us a post)
            h = plain_window_max(x, mask, self.conv, self.kernel, self.compute_dtype)
        return self.out(self.dropout(torch.tanh(torch.tanh(h))))  # (B, d)


class BagEncoder(nn.Module):
    """WSABIE's post embedding: the mean of its word vectors (f(w, t) = w^T U^T V t)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, d)


class TagSpaceModel(nn.Module):
    word_to_tag: torch.Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        scale = config.init_scale / config.dim**0.5
        self.word_emb = nn.Parameter(torch.randn(config.n_words, config.dim) * scale)
        self.tag_emb = nn.Parameter(torch.randn(config.n_tags, config.dim) * scale)
        self.encoder: nn.Module = ConvEncoder(config) if config.encoder == "conv" else BagEncoder()
        self.copy_weight = nn.Parameter(torch.zeros(()), requires_grad=config.word_tag_share)
        # word id -> id of the identical tag, or -1; set by link_words_to_tags()
        self.register_buffer("word_to_tag", torch.full((config.n_words,), -1, dtype=torch.long))

    def link_words_to_tags(self, words: list[str], tags: dict[str, int]) -> None:
        """Map each word to the tag spelled the same (for ``word_tag_share``)."""
        ids = [tags.get(w, -1) for w in words]
        self.word_to_tag.copy_(torch.tensor(ids, dtype=torch.long))

    def tags_in_posts(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) word ids -> (B, L) ids of the identical tags, -1 where none."""
        return self.word_to_tag[ids]

    def embed_posts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) word ids with boundary padding; mask: (B, W) -> (B, d)."""
        return self.encoder(self.word_emb[ids], mask)

    def score_all(self, post_emb: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) -> (B, n_tags): f(w, t) for every tag (ids: (B, L) for word-tag sharing)."""
        scores = post_emb @ self.tag_emb.T
        if self.config.word_tag_share and ids is not None:
            present = self.tags_in_posts(ids)  # (B, L)
            present = torch.where(present < 0, self.config.n_tags, present)
            hits = torch.zeros(scores.shape[0], self.config.n_tags + 1)
            hits.scatter_(1, present, 1.0)
            scores = scores + self.copy_weight * hits[:, :-1]
        return scores
