"""Hogwild worker threads that keep training the live model on the stream's tagged posts.

Posts wait in a bounded queue; when it is full the ingestion loop pauses its partitions
(backpressure) rather than buffer without limit. Training is best effort with respect to
delivery: a crash loses at most the queued posts' training steps, never their stored effect.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

import torch

from daemon.metrics import Metrics
from tagspace.dataset import Post
from tagspace.online import OnlineTagSpace

log = logging.getLogger(__name__)


class OnlineTrainer:
    def __init__(self, online: OnlineTagSpace, metrics: Metrics, workers: int, batch_size: int,
                 queue_size: int):
        self.online = online
        self.metrics = metrics
        self.batch_size = batch_size
        self.queue: queue.Queue[Post] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"hogwild-{i}", daemon=True)
                         for i in range(workers)]
        self.steps = 0  # read by tests and benchmarks; written by the workers (approximate)

    def start(self) -> None:
        torch.set_num_threads(1)  # one core per Hogwild thread, as in the paper's setting
        for t in self._threads:
            t.start()

    def room(self) -> int:
        return self.queue.maxsize - self.queue.qsize()

    def offer(self, posts: Sequence[Post]) -> int:
        """Queue tagged posts without blocking; returns how many did not fit (the caller
        pauses ingestion before the queue can overflow, so this is normally 0)."""
        dropped = 0
        for post in posts:
            try:
                self.queue.put_nowait(post)
            except queue.Full:
                dropped += 1
        self.metrics.train_queue.set(self.queue.qsize())
        return dropped

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
                continue
            self.metrics.train_queue.set(self.queue.qsize())
            if step.examples:
                self.metrics.train_examples.inc(step.examples)
                self.metrics.train_loss.set(step.loss / step.examples)
                self.metrics.warp_samples.set(step.trials)
                self.steps += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the current steps; queued posts are not trained on (best effort)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
