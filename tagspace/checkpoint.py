"""Versioned checkpoint directories: config + vocabularies + weights, never pickled code.

Layout (``FORMAT_VERSION`` 1):
    config.json        {"format_version", "model": ModelConfig, "train": {...}, "extra": {...}}
    words.tsv          word vocabulary, one ``token<TAB>count`` per id
    tags.tsv           tag vocabulary
    weights.safetensors
A directory is written beside the target and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.tagger import Tagger
from tagspace.vocab import PAD, UNK, Vocabulary

FORMAT_VERSION = 1
WORD_SPECIALS = (PAD, UNK)


@dataclass
class Checkpoint:
    tagger: Tagger
    train: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(out: str | Path, checkpoint: Checkpoint) -> Path:
    out = Path(out)
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
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{path}: not a tagspace model directory (no config.json)")
    config = json.loads(config_path.read_text())
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {version!r}, this tagspace reads {FORMAT_VERSION}"
        )
    model_config = ModelConfig(**config["model"])
    words = Vocabulary.load(path / "words.tsv", WORD_SPECIALS)
    tags = Vocabulary.load(path / "tags.tsv")
    model = TagSpaceModel(model_config)
    state = load_file(str(path / "weights.safetensors"))
    model.load_state_dict(state, strict=True)  # shape mismatches raise with the tensor's name
    return Checkpoint(Tagger(model, words, tags), config.get("train", {}), config.get("extra", {}))
