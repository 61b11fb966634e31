"""The live model's versions: start-up loading, periodic atomic checkpoints, the version counter.

Layout of ``model_dir``: ``checkpoints/v00000007/`` (a ``tagspace train``-format directory) per
version and ``LATEST`` naming the newest complete one (replaced atomically after the checkpoint
is on disk). Start-up resumes from ``LATEST``; else loads ``model_dir`` itself when it is a
``tagspace train`` output; else starts a fresh model that learns everything from the stream.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.store import Store, StoredPost
from tagspace.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace, restore_online
from tagspace.personalize import (
    DEFAULT_WEIGHTS,
    Personalizer,
    load_personalization,
    save_personalization,
)

log = logging.getLogger(__name__)


class ModelHub:
    def __init__(self, model_dir: Path, capacity: Capacity, train: TrainConfig,
                 fresh: ModelConfig, keep: int = 3):
        self.model_dir = Path(model_dir)
        self.keep = keep
        self.capacity, self.train = capacity, train
        self.source, self.online, self.version = self._load(capacity, train, fresh)
        self.personalizer = Personalizer(*load_personalization(
            self._source_dir, self._source_extra, DEFAULT_WEIGHTS))
        self.version_time = time.time()
        self._lock = threading.Lock()

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / "checkpoints"

    def _load(self, capacity: Capacity, train: TrainConfig,
              fresh: ModelConfig) -> tuple[str, OnlineTagSpace, int]:
        latest = self.checkpoints / "LATEST"
        if latest.is_file():
            path = self.checkpoints / latest.read_text().strip()
            checkpoint = load_checkpoint(path, keep_free_rows=True)
            self._source_dir, self._source_extra = path, checkpoint.extra
            version = int(checkpoint.extra.get("version", 0))
            log.info("resuming from checkpoint %s (version %d)", path, version)
            return "checkpoint", restore_online(checkpoint.tagger, capacity, train,
                                                checkpoint.arrays), version
        if (self.model_dir / "config.json").is_file():
            checkpoint = load_checkpoint(self.model_dir, keep_free_rows=True)
            self._source_dir, self._source_extra = self.model_dir, checkpoint.extra
            log.info("loaded the trained model in %s", self.model_dir)
            return "trained", restore_online(checkpoint.tagger, capacity, train,
                                             checkpoint.arrays), 1
        log.info("no model in %s: starting a fresh one", self.model_dir)
        self._source_dir, self._source_extra = self.model_dir, {}
        return "fresh", OnlineTagSpace.fresh(fresh, capacity, train), 1

    def reload_if_newer(self) -> bool:
        """Serve role: load the version a trainer published, when newer than ours. The swap
        is one attribute assignment: requests in flight finish on the model they started with."""
        latest = self.checkpoints / "LATEST"
        if not latest.is_file():
            return False
        name = latest.read_text().strip()
        if not name.startswith("v") or int(name[1:]) <= self.version:
            return False
        checkpoint = load_checkpoint(self.checkpoints / name, keep_free_rows=True)
        online = restore_online(checkpoint.tagger, self.capacity, self.train, checkpoint.arrays)
        personalizer = Personalizer(*load_personalization(
            self.checkpoints / name, checkpoint.extra, DEFAULT_WEIGHTS))
        self.online, self.personalizer = online, personalizer
        self.version = int(checkpoint.extra.get("version", name[1:]))
        self.version_time = time.time()
        log.info("loaded model version %d published in %s", self.version, self.checkpoints)
        return True

    def reembed(self, store: Store, posts: Sequence[StoredPost]) -> tuple[np.ndarray, int, int]:
        """Embed stored posts with the current model and write the embeddings back wherever an
        older version made them: (embeddings, their version, how many were replaced)."""
        version = self.version  # read first: a label never newer than the model
        embs = self.online.tagger.embed_all([p.tokens for p in posts])
        changed = store.set_embeddings(
            [(p.post_id, e) for p, e in zip(posts, embs, strict=True)], version)
        return embs, version, changed

    def checkpoint(self) -> Path:
        """Write the next version; the previous checkpoints stay until it is complete."""
        with self._lock:  # the periodic and the final checkpoint never interleave
            return self._checkpoint()

    def _checkpoint(self) -> Path:
        version = self.version + 1
        name = f"v{version:08d}"
        personalizer = self.personalizer  # carried from version to version
        extra = {"version": version, "personalize": personalizer.weights.to_dict()}
        tagger, arrays = self.online.snapshot_state()  # with the rows' last-seen clocks
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
