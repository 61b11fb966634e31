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
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from tagspace.model import ModelConfig, TagSpaceModel
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a model directory; any problem with it is a ValueError naming the directory."""
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
        model = TagSpaceModel(model_config)
        state = load_file(str(path / "weights.safetensors"))
        model.load_state_dict(state, strict=True)  # a shape mismatch names the tensor
        tagger = Tagger(model, words, tags)
        arrays = load_arrays(str(path / ARRAYS)) if (path / ARRAYS).is_file() else {}
    except (OSError, KeyError, TypeError, AttributeError, RuntimeError, ValueError,
            SafetensorError) as e:
        raise ValueError(f"{path}: cannot load the model: {e}") from e
    return Checkpoint(tagger, config.get("train", {}), config.get("extra", {}), arrays)
