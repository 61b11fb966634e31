"""The live model's versions: start-up loading, periodic atomic checkpoints, the version counter.

Layout of ``model_dir``: ``checkpoints/v00000007/`` (a ``tagspace train``-format directory) per
version and ``LATEST`` naming the newest complete one (replaced atomically after the checkpoint
is on disk). Start-up resumes from ``LATEST``; else loads ``model_dir`` itself when it is a
``tagspace train`` output; else starts a fresh model that learns everything from the stream.

A diverged model (a NaN or an infinity in its weights) is never checkpointed nor loaded: the
last good version stays the latest, and start-up falls back to the newest finite version.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from daemon.config import Settings
from daemon.metrics import Metrics
from daemon.store import Store, StoredPost
from tagspace.bow import BagOfWords
from tagspace.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace, nonfinite_parameters, restore_online
from tagspace.personalize import (
    DEFAULT_WEIGHTS,
    Personalizer,
    PersonalizeWeights,
    load_personalization,
    save_personalization,
)
from tagspace.tagger import Tagger

log = logging.getLogger(__name__)


# A cached author's past: its model vectors are this old at most while training moves them.
# Not keyed by the version: a checkpoint changes no weight, and a version key made every
# author's next request embed up to 200 past posts again after each checkpoint (tens of ms).
HISTORY_VECTORS_MAX_AGE_S = 600.0


class ModelDiverged(RuntimeError):
    """The live model has non-finite weights: not checkpointed; the last good version stays."""


class ModelHub:
    def __init__(self, model_dir: Path, capacity: Capacity, train: TrainConfig,
                 fresh: ModelConfig, keep: int = 3, metrics: Metrics | None = None):
        self.model_dir = Path(model_dir)
        self.keep = keep
        self.metrics = metrics  # counts refused checkpoints (result="diverged") when given
        self._rejected: set[str] = set()  # published versions found diverged (serve role)
        self.capacity, self.train = capacity, train
        self.source, self.online, self.version, self.personalizer = self._load(
            capacity, train, fresh)
        self.version_time = time.time()
        self.weights_id = 0  # moves when the weights are replaced (a reload), not on checkpoints
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> ModelHub:
        """The model of ``model_dir`` (its latest version, a trained model, or a fresh one
        sized by the settings)."""
        s = settings
        capacity = Capacity(s.word_capacity, s.tag_capacity, s.min_word_count, s.min_tag_count,
                            s.tag_first_sight)
        fresh = ModelConfig(encoder="conv", dim=s.dim, hidden=s.hidden, dropout=0.0,
                            word_tag_share=True)
        return cls(Path(s.model_dir), capacity, train_config(s), fresh, s.keep_checkpoints,
                   metrics=metrics)

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / "checkpoints"

    def _load(self, capacity: Capacity, train: TrainConfig,
              fresh: ModelConfig) -> tuple[str, OnlineTagSpace, int, Personalizer]:
        latest = self.checkpoints / "LATEST"
        if latest.is_file():
            path = self.checkpoints / latest.read_text().strip()
            checkpoint = load_checkpoint(path, keep_free_rows=True)
            if nonfinite_parameters(checkpoint.tagger.model):
                path, checkpoint = self._last_good(path)
            version = int(checkpoint.extra.get("version", 0))
            log.info("resuming from checkpoint %s (version %d)", path, version)
            return "checkpoint", restore_online(checkpoint.tagger, capacity, train,
                                                checkpoint.arrays), version, \
                _personalizer(path, checkpoint.extra)
        if (self.model_dir / "config.json").is_file():
            checkpoint = load_checkpoint(self.model_dir, keep_free_rows=True)
            log.info("loaded the trained model in %s", self.model_dir)
            return "trained", restore_online(checkpoint.tagger, capacity, train,
                                             checkpoint.arrays), 1, \
                _personalizer(self.model_dir, checkpoint.extra)
        log.info("no model in %s: starting a fresh one", self.model_dir)
        return "fresh", OnlineTagSpace.fresh(fresh, capacity, train), 1, \
            _personalizer(self.model_dir, {})

    def _last_good(self, diverged: Path) -> tuple[Path, Checkpoint]:
        """The newest version older than a diverged one whose weights are all finite."""
        log.error("%s has non-finite weights: resuming from the newest finite version",
                  diverged)
        for path in sorted(self.checkpoints.glob("v*"), reverse=True):
            if path.name >= diverged.name:
                continue
            try:
                checkpoint = load_checkpoint(path, keep_free_rows=True)
            except ValueError:
                log.exception("skipping %s", path)
                continue
            if not nonfinite_parameters(checkpoint.tagger.model):
                return path, checkpoint
        raise ValueError(f"{diverged} has non-finite weights and no older version is finite")

    def try_reload(self) -> None:
        """``reload_if_newer``, logging a failure (a half-copied or bad checkpoint): the
        current model keeps serving."""
        try:
            self.reload_if_newer()
        except Exception:
            log.exception("loading a published model version failed")

    def reload_if_newer(self) -> bool:
        """Serve role: load the version a trainer published, when newer than ours. The swap
        is one attribute assignment: requests in flight finish on the model they started with."""
        latest = self.checkpoints / "LATEST"
        if not latest.is_file():
            return False
        name = latest.read_text().strip()
        if not name.startswith("v") or int(name[1:]) <= self.version or name in self._rejected:
            return False
        checkpoint = load_checkpoint(self.checkpoints / name, keep_free_rows=True)
        bad = nonfinite_parameters(checkpoint.tagger.model)
        if bad:  # never served; a trainer does not publish one, this is a second line
            self._rejected.add(name)
            log.error("published version %s has non-finite %s: not loaded, still serving "
                      "version %d", name, ", ".join(bad), self.version)
            return False
        online = restore_online(checkpoint.tagger, self.capacity, self.train, checkpoint.arrays)
        personalizer = _personalizer(self.checkpoints / name, checkpoint.extra)
        self.online, self.personalizer = online, personalizer
        self.weights_id += 1
        self.version = int(checkpoint.extra.get("version", name[1:]))
        self.version_time = time.time()
        log.info("loaded model version %d published in %s", self.version, self.checkpoints)
        return True

    @property
    def tagger(self) -> Tagger:
        return self.online.tagger

    def reembed(self, store: Store, posts: Sequence[StoredPost]) -> tuple[np.ndarray, int, int]:
        return reembed(self, store, posts)

    def checkpoint(self) -> Path:
        """Write the next version; the previous checkpoints stay until it is complete.
        ModelDiverged (nothing written) when the live model has non-finite weights."""
        with self._lock:  # the periodic and the final checkpoint never interleave
            return self._checkpoint()

    def _checkpoint(self) -> Path:
        version = self.version + 1
        name = f"v{version:08d}"
        personalizer = self.personalizer  # carried from version to version
        extra = {"version": version, "personalize": personalizer.weights.to_dict()}
        tagger, arrays = self.online.snapshot_state()  # with the rows' last-seen clocks
        bad = nonfinite_parameters(tagger.model)
        if bad:
            if self.metrics is not None:
                self.metrics.checkpoints.labels("diverged").inc()
            raise ModelDiverged(f"the live model has non-finite {', '.join(bad)}: not "
                                f"checkpointed, version {self.version} stays the latest")
        path = save_checkpoint(self.checkpoints / name, Checkpoint(tagger, extra=extra,
                                                                   arrays=arrays))
        if personalizer.bow is not None:
            save_personalization(path, personalizer.bow)
        tmp = self.checkpoints / ".LATEST.tmp"
        tmp.write_text(name + "\n")
        with open(tmp) as f:
            os.fsync(f.fileno())
        tmp.replace(self.checkpoints / "LATEST")
        self.version, self.version_time = version, time.time()
        for old in sorted(self.checkpoints.glob("v*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path


def train_config(settings: Settings) -> TrainConfig:
    """Online training's step settings."""
    s = settings
    return TrainConfig(lr=s.lr, batch_size=s.batch_size, negatives=s.negatives,
                       positives="all", workers=s.workers, bf16=s.train_bf16,
                       device=s.train_device)


class ServedModel(Protocol):
    """What serving reads of a model: the hub itself, or a serving process's mirror of it."""

    version: int
    version_time: float
    weights_id: int  # changes when the weights are replaced, not when they are trained
    personalizer: Personalizer

    @property
    def tagger(self) -> Tagger: ...

    def reembed(self, store: Store,
                posts: Sequence[StoredPost]) -> tuple[np.ndarray, int, int]: ...


def reembed(model: ServedModel, store: Store,
            posts: Sequence[StoredPost]) -> tuple[np.ndarray, int, int]:
    """Embed stored posts with the current model and write the embeddings back wherever an
    older version made them: (embeddings, their version, how many were replaced)."""
    version = model.version  # read first: a label never newer than the model
    embs = model.tagger.embed_all([p.tokens for p in posts])
    changed = store.set_embeddings(
        [(p.post_id, e) for p, e in zip(posts, embs, strict=True)], version)
    return embs, version, changed


def _personalizer(model_dir: Path, extra: dict) -> Personalizer:
    """The personalization a model directory was saved with (tuned weights and IDF)."""
    return serving_personalizer(*load_personalization(model_dir, extra, DEFAULT_WEIGHTS))


def serving_personalizer(weights: PersonalizeWeights, bow: BagOfWords | None) -> Personalizer:
    """The daemon's: an author's past posts' model vectors kept at most
    ``HISTORY_VECTORS_MAX_AGE_S`` under online training (bounded staleness), and computed again
    at once when the weights are replaced (``weights_id``, in the caller's key)."""
    return Personalizer(weights, bow, max_age_s=HISTORY_VECTORS_MAX_AGE_S)
