"""Ingestion as a chain of small steps, in the spirit of getsentry/arroyo's strategies.

A poll's records travel as one ``Batch`` through steps that each do one thing and hand it on
(``daemon.ingest.build_chain`` writes their order down, once per role). A step that cannot take
a batch now (Redis down, the broker refusing dead letters) raises ``MessageRejected`` from
``submit``; the step before it keeps the batch and offers it again on ``poll``, refusing new
ones meanwhile, so the rejection travels back to the consumer, which pauses its partitions and
keeps polling (so it stays in its group) until the chain takes the batch. Nothing waits inside
a step, and the last step commits, in order.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from daemon.records import Interaction
from daemon.store import WriteResult
from tagspace.dataset import Post


class MessageRejected(Exception):
    """This step cannot take the batch now: offer the same batch again later."""


@dataclass
class Batch:
    """One poll's records on their way through the chain; each step fills in its part."""

    records: dict[Any, list[Any]]  # TopicPartition -> ConsumerRecords, in offset order
    posts: list[tuple[Post, float]] = field(default_factory=list)  # with the Kafka timestamp
    interactions: list[Interaction] = field(default_factory=list)
    dead: list[tuple[str, bytes]] = field(default_factory=list)  # (source topic, dead letter)
    embeddings: np.ndarray | None = None
    version: int = 0  # of the model that made the embeddings
    stored: WriteResult | None = None  # None: not stored (the trainer role)
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept across retries

    def learnable(self) -> list[Post]:
        """The posts to learn from: those stored for the first time, or all when not stored."""
        posts = [p for p, _ in self.posts]
        if self.stored is None:
            return posts
        return [p for p, new in zip(posts, self.stored.post_is_new, strict=True) if new]


class Step(Protocol):
    def submit(self, batch: Batch) -> None:
        """Take the batch, or raise ``MessageRejected`` (then nothing of it was done here)."""

    def poll(self) -> None:
        """Move held work on."""

    def close(self) -> None:
        """Release clients (held batches are dropped: they were never committed)."""


class Stage:
    """A step that does its work in ``apply`` and hands the batch to ``next``. When ``next``
    rejects it, the batch is held and offered again on each ``poll`` (arroyo's RunTask)."""

    def __init__(self, next_step: Step):
        self.next = next_step
        self._held: Batch | None = None

    def apply(self, batch: Batch) -> None:
        raise NotImplementedError

    def submit(self, batch: Batch) -> None:
        if self._held is not None:
            raise MessageRejected
        self.apply(batch)
        self._held = batch
        self._forward()

    def poll(self) -> None:
        self._forward()
        self.next.poll()

    def close(self) -> None:
        self.next.close()

    def _forward(self) -> None:
        if self._held is None:
            return
        try:
            self.next.submit(self._held)
        except MessageRejected:
            return
        self._held = None


class Retry:
    """When a failing step may try again: exponential backoff with full jitter, capped at 5 s."""

    def __init__(self) -> None:
        self.attempts = 0
        self._at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._at

    def failed(self) -> None:
        self.attempts += 1
        self._at = time.monotonic() + backoff(self.attempts)

    def succeeded(self) -> None:
        self.attempts, self._at = 0, 0.0


def backoff(attempt: int) -> float:
    return random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2 ** min(attempt, 10))
