"""Versioned checkpoint directories: config + vocabularies + weights, never pickled code.

Layout (``FORMAT_VERSION`` 1):
    config.json        {"format_version", "model": ModelConfig, "train": {...}, "extra": {...}}
    words.tsv          word vocabulary, one ``token<TAB>count`` per id
    tags.tsv           tag vocabulary
    weights.safetensors
    arrays.safetensors optional: named per-row state beside the weights (an online model's
                       last-seen clocks, ``words.last_seen`` and ``tags.last_seen``)
A directory is written beside the target and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.online_vocab import FREE_PREFIX
from tagspace.tagger import Tagger
from tagspace.vocab import PAD, UNK, Vocabulary

FORMAT_VERSION = 1
WORD_SPECIALS = (PAD, UNK)
ARRAYS = "arrays.safetensors"


@dataclass
class Checkpoint:
    tagger: Tagger
    train: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # arrays.safetensors


def check_writable(out: str | Path) -> Path:
    """Refuse to replace anything but a model directory (call it before long training)."""
    out = Path(out).resolve()
    if out.exists() and not (out / "config.json").is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a tagspace model directory: "
                             "refusing to replace it")
    return out


def save_checkpoint(out: str | Path, checkpoint: Checkpoint) -> Path:
    out = check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tagger = checkpoint.tagger
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = {
            "format_version": FORMAT_VERSION,
            "model": tagger.model.config.to_dict(),
            "train": checkpoint.train,
            "extra": checkpoint.extra,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tagger.words.save(tmp / "words.tsv")
        tagger.tags.save(tmp / "tags.tsv")
        weights = {k: v.detach().contiguous() for k, v in tagger.model.state_dict().items()}
        save_file(weights, str(tmp / "weights.safetensors"))
        if checkpoint.arrays:
            save_arrays({k: np.ascontiguousarray(v) for k, v in checkpoint.arrays.items()},
                        str(tmp / ARRAYS))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        # Two renames: a crash between them leaves the previous model at .NAME.old, which
        # load_checkpoint falls back to.
        old = _old(out)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        _fsync(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _old(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, keep_free_rows: bool = False) -> Checkpoint:
    """Load a model directory; any problem with it is a ValueError naming the directory.

    A checkpoint of the daemon's online model has free rows (``<free:N>`` placeholders in its
    vocabularies): they are dropped, so the model ranks and counts only the tags in use, unless
    ``keep_free_rows`` (the daemon's own restore, which keeps every token at its row).
    """
    path = Path(path)
    if not (path / "config.json").is_file() and (_old(path) / "config.json").is_file():
        path = _old(path)  # a save was interrupted between its two renames
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{path}: not a tagspace model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text())
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"checkpoint format {version!r}, this tagspace reads {FORMAT_VERSION}")
        model_config = ModelConfig(**config["model"])
        words = Vocabulary.load(path / "words.tsv", WORD_SPECIALS)
        tags = Vocabulary.load(path / "tags.tsv")
        state = load_file(str(path / "weights.safetensors"))
        arrays = load_arrays(str(path / ARRAYS)) if (path / ARRAYS).is_file() else {}
        if not keep_free_rows:
            model_config, words, tags, state, arrays = _without_free_rows(
                model_config, words, tags, state, arrays)
        model = TagSpaceModel(model_config)
        model.load_state_dict(state, strict=True)  # a shape mismatch names the tensor
        tagger = Tagger(model, words, tags)
    except (OSError, KeyError, TypeError, AttributeError, RuntimeError, ValueError,
            SafetensorError) as e:
        raise ValueError(f"{path}: cannot load the model: {e}") from e
    return Checkpoint(tagger, config.get("train", {}), config.get("extra", {}), arrays)


def _without_free_rows(
    config: ModelConfig, words: Vocabulary, tags: Vocabulary, state: dict[str, torch.Tensor],
    arrays: dict[str, np.ndarray],
) -> tuple[ModelConfig, Vocabulary, Vocabulary, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The same model with only the rows that hold a token (ids renumbered in row order)."""
    keep_w = [i for i, t in enumerate(words.tokens) if not t.startswith(FREE_PREFIX)]
    keep_t = [i for i, t in enumerate(tags.tokens) if not t.startswith(FREE_PREFIX)]
    if len(keep_w) == len(words) and len(keep_t) == len(tags):
        return config, words, tags, state, arrays
    if not keep_t:
        raise ValueError("the online model has no tag in use yet")
    n = len(words.specials)
    words = Vocabulary([words.tokens[i] for i in keep_w[n:]],
                       [words.counts[i] for i in keep_w[n:]], words.specials)
    tags = Vocabulary([tags.tokens[i] for i in keep_t], [tags.counts[i] for i in keep_t])
    rows_w, rows_t = torch.tensor(keep_w), torch.tensor(keep_t)
    new_tag = torch.full((config.n_tags,), -1, dtype=torch.long)
    new_tag[rows_t] = torch.arange(len(keep_t))
    link = state["word_to_tag"][rows_w]
    state = state | {"word_emb": state["word_emb"][rows_w], "tag_emb": state["tag_emb"][rows_t],
                     "word_to_tag": torch.where(link >= 0, new_tag[link.clamp_min(0)], -1)}
    arrays = {k: (v[keep_w] if k.startswith("words.") and len(v) == config.n_words else
                  v[keep_t] if k.startswith("tags.") and len(v) == config.n_tags else v)
              for k, v in arrays.items()}
    values = config.to_dict() | {"n_words": len(keep_w), "n_tags": len(keep_t)}
    return ModelConfig(**values), words, tags, state, arrays  # type: ignore[arg-type]
