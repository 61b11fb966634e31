"""Online WARP steps on already-encoded posts: the Hogwild workers of one process.

``OnlineTagSpace`` encodes posts with its vocabularies (``EncodedBatch``) and hands them to
``HogwildSteps``, which runs them on the calling thread's worker. The two halves meet only
through the model's tensors and the vocabularies' row generations, so the steps can run in
another process over shared memory (``daemon.train_process``) while the vocabularies stay with
the ingestion side.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from tagspace.hogwild import HogwildWorker, PendingStep, TrainConfig
from tagspace.model import TagSpaceModel

# Why a post handed to training was not trained on (``OnlineStep.skipped``)
TAG_NOT_ADMITTED = "tag_not_admitted"  # none of its tags is in the vocabulary (yet)
TOO_FEW_TAGS = "too_few_tags"  # under 2 tags in use: no negative to rank against
NONFINITE = "nonfinite"  # its step was dropped: a non-finite loss or gradient
EXPLODING_LOSS = "exploding_loss"  # its step was dropped: loss far above its running mean


@dataclass(frozen=True)
class Guard:
    """When a step is dropped rather than applied, so the live model cannot silently degrade:
    a non-finite loss, post embedding or gradient (a diverged or corrupted model), or a loss
    per example over ``loss_factor`` x its running mean (floored at ``loss_floor``), once
    ``warmup_steps`` steps have set that mean."""

    loss_factor: float = 100.0
    loss_floor: float = 1.0
    warmup_steps: int = 20
    decay: float = 0.99  # running mean: m <- decay * m + (1 - decay) * loss per example


@dataclass(frozen=True)
class OnlineStep:
    examples: int  # posts trained on
    loss: float
    trials: float  # WARP draws per example
    stale_rows: int = 0  # rows not updated: evicted and given to another token meanwhile
    skipped: Mapping[str, int] = field(default_factory=dict)  # posts not trained on, by reason
    dropped: str | None = None  # the step was computed but not applied: NONFINITE, ...


# called with a step's word and tag rows and the generations its batch was encoded at
AppliedRows = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], None]


@dataclass(frozen=True)
class EncodedBatch:
    """Posts as row ids, ready for a step (small and picklable: it crosses processes)."""

    words: list[np.ndarray]  # per post, its word rows
    gold: list[np.ndarray]  # per post, its tag rows in use (>= 1)
    since: tuple[int, int]  # the word and tag vocabularies' generations before encoding
    skipped: Mapping[str, int] = field(default_factory=dict)  # posts left out, by reason
    created: float = 0.0  # when it was encoded (time.time()): the training lag starts there

    def __len__(self) -> int:
        return len(self.gold)


class HogwildSteps:
    """Per-thread Hogwild workers over one model, with the step ``Guard``."""

    def __init__(self, model: TagSpaceModel, config: TrainConfig, pad_id: int, unk_id: int,
                 row_generation: tuple[np.ndarray, np.ndarray], guard: Guard | None = None,
                 on_applied: AppliedRows | None = None):
        """``on_applied(word_rows, tag_rows, since)``: after each applied step, with the rows it
        changed (a device copy of the model writes them back: ``daemon.device_replica``)."""
        self.model, self.config = model, config
        self.on_applied = on_applied
        self.pad_id, self.unk_id = pad_id, unk_id
        self.row_generation = row_generation
        self.guard = guard or Guard()
        self.loss_mean, self.loss_steps = 0.0, 0  # applied steps' loss per example
        self.pool = np.zeros(0, np.int64)  # WARP negatives: the tag rows in use
        self._workers: dict[int, HogwildWorker] = {}
        self._lock = threading.Lock()
        self._next_rank = 0

    def set_pool(self, pool: np.ndarray) -> None:
        with self._lock:
            self.pool = pool
            for worker in self._workers.values():
                worker.negative_pool = pool

    def reset_rows(self, word_rows: list[int], tag_rows: list[int]) -> None:
        """Rows given to new tokens start with fresh optimizer state in every worker."""
        with self._lock:
            for worker in self._workers.values():
                worker.reset_rows(word_rows, tag_rows)

    def step(self, batch: EncodedBatch) -> OnlineStep:
        """One WARP step on the calling thread's worker (Hogwild: threads never wait for each
        other's updates); a step that fails the ``Guard`` is not applied (``dropped``)."""
        skipped: Counter[str] = Counter(batch.skipped)
        gold = batch.gold
        if gold and len(self.pool) < 2:
            skipped[TOO_FEW_TAGS] += len(gold)
            gold = []
        if not gold:
            return OnlineStep(0, 0.0, 0.0, skipped=dict(skipped))
        worker = self._worker()
        pending = worker.forward(batch.words, gold)
        per_example = pending.stats.loss / len(gold)
        dropped = self._check(pending, per_example)
        if dropped is not None:
            skipped[dropped] += len(gold)
            return OnlineStep(0, 0.0, 0.0, skipped=dict(skipped), dropped=dropped)
        stats = worker.apply(pending, batch.since)
        if self.on_applied is not None and pending.grads:
            self.on_applied(pending.word_rows, pending.tag_rows, batch.since)
        self._track_loss(per_example)
        return OnlineStep(stats.examples, stats.loss, stats.trials, stats.stale_rows,
                          dict(skipped))

    def _check(self, pending: PendingStep, per_example: float) -> str | None:
        if not pending.is_finite():
            return NONFINITE
        guard = self.guard
        if self.loss_steps >= guard.warmup_steps and \
                per_example > guard.loss_factor * max(self.loss_mean, guard.loss_floor):
            return EXPLODING_LOSS
        return None

    def _track_loss(self, per_example: float) -> None:
        # Shared by the workers without a lock: an approximate mean is enough here.
        decay = self.guard.decay if self.loss_steps else 0.0
        self.loss_mean = decay * self.loss_mean + (1.0 - decay) * per_example
        self.loss_steps += 1

    def _worker(self) -> HogwildWorker:
        key = threading.get_ident()
        worker = self._workers.get(key)
        if worker is None:
            with self._lock:
                self._next_rank += 1
                worker = HogwildWorker(self.model, self.config, self._next_rank, self.pad_id,
                                       self.unk_id)
                worker.negative_pool = self.pool
                worker.row_generation = self.row_generation
                self._workers[key] = worker
        return worker
