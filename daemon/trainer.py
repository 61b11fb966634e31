"""Hogwild worker threads that keep training the live model on the stream's tagged posts.

The daemon runs them in a child process by default (``daemon.train_process``); these threads
in the daemon's own process are the ``train_process = false`` setting. Posts wait in a bounded
queue; when it is full, new posts are not queued (counted: queue_full) and ingestion goes on:
training never slows it. Training is best effort with respect to
delivery: a crash loses at most the queued posts' training steps, never their stored effect.
Every offered post not trained on is counted by reason (``tagspace_training_posts_skipped_total``):
queue_full, stopping (queued at stop), error (a failed step), and those ``OnlineTagSpace.train``
reports (tag_not_admitted, too_few_tags, and the posts of a dropped step).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import torch

from daemon.metrics import Metrics
from tagspace.dataset import Post
from tagspace.online import OnlineStep, OnlineTagSpace

log = logging.getLogger(__name__)
QUEUE_FULL, STOPPING, ERROR = "queue_full", "stopping", "error"  # and OnlineStep.skipped's
DROP_LOG_EVERY_S = 10.0


class Trainer(Protocol):
    """What the daemon asks of its training: ``OnlineTrainer`` (threads in this process) or
    ``daemon.train_process.TrainingProcess`` (a child process)."""

    steps: int

    def start(self) -> None: ...
    def offer(self, posts: Sequence[Post]) -> int: ...
    def idle(self) -> bool: ...
    def stop(self, timeout: float = 2.0) -> None: ...


class OnlineTrainer:
    def __init__(self, online: OnlineTagSpace, metrics: Metrics, workers: int, batch_size: int,
                 queue_size: int):
        self.online = online
        self.metrics = metrics
        self.batch_size = batch_size
        self.queue: queue.Queue[Post] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._offer_lock = threading.Lock()  # a post is either queued before stop or counted
        self.recorder = StepRecorder(metrics)
        self._threads = [threading.Thread(target=self._run, name=f"hogwild-{i}", daemon=True)
                         for i in range(workers)]
        self.steps = 0  # read by tests and benchmarks; written by the workers (approximate)

    def start(self) -> None:
        torch.set_num_threads(1)  # one core per Hogwild thread, as in the paper's setting
        for t in self._threads:
            t.start()

    def idle(self) -> bool:
        """Nothing queued (a step may still be finishing: tests also watch ``steps``)."""
        return self.queue.empty()

    def offer(self, posts: Sequence[Post]) -> int:
        """Queue tagged posts without blocking; returns how many were not queued (counted:
        queue_full, or stopping once stopped; the caller pauses ingestion before the queue
        can overflow, so this is normally 0)."""
        with self._offer_lock:
            if self._stop.is_set():
                self._skip(STOPPING, len(posts))
                return len(posts)
            dropped = 0
            for post in posts:
                try:
                    self.queue.put_nowait(post)
                except queue.Full:
                    dropped += 1
        self._skip(QUEUE_FULL, dropped)
        self.metrics.train_queue.set(self.queue.qsize())
        return dropped

    def _skip(self, reason: str, posts: int) -> None:
        self.recorder.skip(reason, posts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                step = self.online.train(batch)
            except Exception:  # one bad step must not kill training
                log.exception("training step failed")
                self._skip(ERROR, len(batch))
                continue
            self.metrics.train_queue.set(self.queue.qsize())
            if self.recorder.record(step):
                self.steps += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the current steps; queued posts are not trained on (best effort): they
        are counted (stopping)."""
        with self._offer_lock:
            self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        left = 0
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
            left += 1
        self._skip(STOPPING, left)
        self.metrics.train_queue.set(self.queue.qsize())


class StepRecorder:
    """A step's outcome in the metrics: examples, loss, skipped posts by reason, dropped steps
    (logged at most every ``DROP_LOG_EVERY_S``), stale rows."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._drop_logged = -DROP_LOG_EVERY_S

    def skip(self, reason: str, posts: int) -> None:
        if posts:
            self.metrics.train_skipped.labels(reason).inc(posts)

    def record(self, step: OnlineStep) -> bool:
        """True when the step was applied to some examples."""
        m = self.metrics
        for reason, n in step.skipped.items():
            self.skip(reason, n)
        if step.dropped is not None:
            m.train_dropped.labels(step.dropped).inc()
            if time.monotonic() - self._drop_logged >= DROP_LOG_EVERY_S:  # no log flood
                self._drop_logged = time.monotonic()
                log.warning("training step dropped (%s): %d posts not trained on",
                            step.dropped, step.skipped.get(step.dropped, 0))
        if step.stale_rows:
            m.train_stale_rows.inc(step.stale_rows)
        if not step.examples:
            return False
        m.train_examples.inc(step.examples)
        m.train_loss.set(step.loss / step.examples)
        m.warp_samples.set(step.trials)
        return True
