"""Hogwild training in a child process at idle CPU priority, over the model's shared memory.

Serving and ingestion never wait for training. The Hogwild workers run in a process of their
own (their own GIL) scheduled ``SCHED_IDLE``, and before each step a worker waits while any
request is being answered (``daemon.in_flight``: the kernel's priority alone did not keep it out
of serving's way on a VM), so they get only the CPU that the HTTP handlers and the ingestion
loop leave. The model's tensors live in shared memory: every update is seen
at once by the parent, which embeds, scores and checkpoints with them (no version to publish,
no second copy of the weights).

The vocabularies stay in the parent (``OnlineTagSpace.observe`` admits rows as posts arrive);
it encodes tagged posts to rows and hands the child ``EncodedBatch``es through a bounded buffer,
newest first. When training falls behind, the oldest waiting batches are dropped and counted
(``queue_full``): ingestion is never paused for training. The child learns of re-assigned rows
from the shared row generations (their optimizer state starts afresh) and of the tags in use
from the shared ``active`` mask.

On a GPU (``train_device``) the steps run on a copy of the model there, which writes the rows
each step changed back into the shared model at once and the layers every ``train_publish_s``
(``daemon.device_replica``).

Faults: a crashed child is restarted (counted in ``tagspace_trainer_restarts_total``) and the
weights survive it, being the parent's memory; its AdaGrad state starts afresh. The child dies
with its parent (``PR_SET_PDEATHSIG``), so a kill -9 of the daemon leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from daemon.device_replica import DeviceReplica
from daemon.in_flight import wait_for_idle_serving
from daemon.metrics import Metrics
from daemon.shared_model import attach, share
from daemon.trainer import ERROR, QUEUE_FULL, STOPPING, StepRecorder
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.online import OnlineTagSpace
from tagspace.online_steps import EncodedBatch, Guard, HogwildSteps, OnlineStep

log = logging.getLogger(__name__)
IN_FLIGHT_PER_WORKER = 2  # batches handed to the child ahead of its workers
RESTART_BACKOFF_S = 1.0


class TrainingProcess:
    """``OnlineTrainer``'s interface (start, offer, stop, steps), the workers in a child."""

    def __init__(self, online: OnlineTagSpace, metrics: Metrics, workers: int, batch_size: int,
                 queue_size: int, train: TrainConfig, guard: Guard | None = None,
                 yield_max_s: float = 0.5, publish_s: float = 1.0):
        """``train.device``: where the steps run; off the CPU on a copy of the model that
        publishes to the shared one (rows at once, the layers every ``publish_s``)."""
        device = torch.device(train.device)
        if device.type == "cuda" and not torch.cuda.is_available():  # not a restart loop later
            raise ValueError(f"train_device={train.device}: this machine has no CUDA device")
        self.online, self.metrics = online, metrics
        self.yield_max_s, self.publish_s = yield_max_s, publish_s
        self.workers, self.batch_size = workers, batch_size
        self.train, self.guard = train, guard or online.guard
        self.max_batches = max(1, queue_size // batch_size)
        self.recorder = StepRecorder(metrics)
        self.steps = 0  # steps applied (read by tests and benchmarks)
        self.restarts = 0
        self._shared = share(online)
        self._ctx = mp.get_context("spawn")
        self._pending: deque[EncodedBatch] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        # A flag in shared memory, not an mp.Event: a child killed while waiting on an Event
        # leaves its condition variable waiting for it, and set() would then hang.
        self._child_stop = torch.zeros(1, dtype=torch.int32).share_memory_()
        self._jobs: Any = None
        self._results: Any = None
        self._proc: Any = None
        self._threads: list[threading.Thread] = []
        self._in_flight = 0  # batches handed to the child, not reported yet

    # the parent's side
    def start(self) -> None:
        self._spawn()
        for name, target in (("train-feed", self._feed), ("train-results", self._collect)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self) -> None:
        self._jobs = self._ctx.Queue(maxsize=IN_FLIGHT_PER_WORKER * self.workers)
        self._results = self._ctx.Queue()
        self._child_stop[0] = 0
        self._proc = self._ctx.Process(
            target=_child_main, name="tagspace-trainer", daemon=True,
            args=(os.getpid(), self._shared, self.train, self.guard, self.workers,
                  self._jobs, self._results, self._child_stop, self.yield_max_s,
                  self.publish_s))
        self._proc.start()
        log.info("training process %d started (%d Hogwild workers, idle CPU priority)",
                 self._proc.pid, self.workers)

    def queued(self) -> int:
        """Posts waiting in the parent for the child."""
        with self._cond:
            return sum(len(b) for b in self._pending)

    def idle(self) -> bool:
        """Nothing waiting here nor in the child's hands (tests wait for it)."""
        with self._cond:
            return not self._pending and self._in_flight == 0

    def offer(self, posts: Sequence[Post]) -> int:
        """Encode tagged posts and queue them without blocking; returns how many were dropped
        or refused (oldest first when full: queue_full; stopping once stopped)."""
        if self._stop.is_set():
            self.recorder.skip(STOPPING, len(posts))
            return len(posts)
        batches = []
        for i in range(0, len(posts), self.batch_size):
            batch = self.online.encode(posts[i:i + self.batch_size])
            for reason, n in batch.skipped.items():  # counted now: it may never be stepped
                self.recorder.skip(reason, n)
            if len(batch):
                batches.append(EncodedBatch(batch.words, batch.gold, batch.since,
                                            created=batch.created))
        dropped = 0
        with self._cond:
            self._pending.extend(batches)
            while len(self._pending) > self.max_batches:
                dropped += len(self._pending.popleft())
            self._cond.notify()
            waiting = sum(len(b) for b in self._pending)
        self.recorder.skip(QUEUE_FULL, dropped)
        self.metrics.train_queue.set(waiting)
        return dropped

    def _feed(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._pending:
                    self._cond.wait(0.2)
                    continue
                batch = self._pending.pop()  # newest first: the oldest are the ones dropped
            while not self._stop.is_set():
                try:
                    with self._cond:  # counted before the child can report it
                        self._in_flight += 1
                    self._jobs.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    self._done(1)
                    continue
                except (ValueError, OSError):  # the queue of a child being replaced
                    self._done(1)
                    time.sleep(0.05)

    def _done(self, batches: int) -> None:
        with self._cond:
            self._in_flight = max(0, self._in_flight - batches)

    def _collect(self) -> None:
        while True:
            try:
                kind, payload = self._results.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    if not self._proc.is_alive():
                        return
                elif not self._proc.is_alive():
                    self._restart()
                continue
            except (EOFError, OSError):
                if self._stop.is_set():
                    return
                self._restart()
                continue
            if kind == "step":
                self._done(1)
                step, created = payload
                if self.recorder.record(step):
                    self.steps += 1
                    self.metrics.train_lag.set(max(0.0, time.time() - created))
            elif kind == "yielded":  # seconds a step waited for requests in flight
                self.metrics.train_yielded.inc(payload)
            elif kind == "error":
                self._done(1)
                self.recorder.skip(ERROR, payload)
            elif kind == "left":  # batches the child held when it stopped
                self.recorder.skip(STOPPING, payload)
                if self._stop.is_set():
                    return

    def _restart(self) -> None:
        code = self._proc.exitcode
        log.error("the training process exited (code %s): restarting it; the weights are "
                  "kept, the batches it held are lost", code)
        with self._cond:
            lost, self._in_flight = self._in_flight, 0
        self.recorder.skip(ERROR, lost * self.batch_size)  # about: batches may be partial
        self.restarts += 1
        self.metrics.trainer_restarts.inc()
        time.sleep(RESTART_BACKOFF_S)
        self._spawn()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the current steps; waiting posts are not trained on (counted:
        stopping)."""
        self._stop.set()
        self._child_stop[0] = 1
        with self._cond:
            left = sum(len(b) for b in self._pending)
            self._pending.clear()
        self.recorder.skip(STOPPING, left)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.05, deadline - time.monotonic()))
        if self._proc is not None:
            self._proc.join(max(0.05, deadline - time.monotonic()))
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1.0)
        self.metrics.train_queue.set(0)


# the child's side
def _child_main(parent: int, shared: dict[str, Any], train: TrainConfig, guard: Guard,
                workers: int, jobs: Any, results: Any, stop_flag: torch.Tensor,
                yield_max_s: float, publish_s: float) -> None:
    from daemon.embedded import die_with_parent

    preexec = die_with_parent(parent)
    if preexec is not None:
        preexec()
    _idle_priority()
    torch.set_num_threads(1)
    stop = stop_flag.numpy()  # the parent's page: it sets 1 to stop us
    model = attach(shared)
    arrays = {k: v.numpy() for k, v in shared["arrays"].items()}
    generations = (arrays["words.row_generation"], arrays["tags.row_generation"])
    replica = None
    if torch.device(train.device).type != "cpu":  # steps on a copy there, written back
        replica = DeviceReplica(model, train.device, generations, publish_s)
        model = replica.model
    steps = HogwildSteps(model, train, shared["pad_id"], shared["unk_id"], generations, guard,
                         on_applied=replica.publish_rows if replica else None)
    rows = _RowWatch(steps, arrays, replica)
    in_flight = shared["in_flight"].numpy()
    threads = [threading.Thread(target=_work, args=(steps, rows, jobs, results, stop,
                                                    in_flight, yield_max_s),
                                name=f"hogwild-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    while not stop[0]:
        time.sleep(0.2)
        if replica is not None:
            replica.publish_layers()
        if os.getppid() != parent:  # orphaned without PDEATHSIG: nothing to train for
            return
    for t in threads:
        t.join(2.0)
    if replica is not None:
        replica.publish_layers(force=True)
    left = 0
    while True:
        try:
            left += len(jobs.get_nowait())
        except (queue.Empty, OSError, ValueError):
            break
    results.put(("left", left))
    results.close()
    results.join_thread()


def _work(steps: HogwildSteps, rows: _RowWatch, jobs: Any, results: Any,
          stop: np.ndarray, in_flight: np.ndarray, yield_max_s: float) -> None:
    torch.set_num_threads(1)
    while not stop[0]:
        try:
            batch = jobs.get(timeout=0.2)
        except queue.Empty:
            continue
        waited = wait_for_idle_serving(in_flight, yield_max_s, stop)  # requests first
        if waited:
            results.put(("yielded", waited))
        try:
            rows.sync()
            step: OnlineStep = steps.step(batch)
        except Exception:  # one bad step must not kill training
            logging.getLogger(__name__).exception("training step failed")
            results.put(("error", len(batch)))
            continue
        results.put(("step", (step, batch.created)))


class _RowWatch:
    """Follows the parent's admissions through the shared arrays: rows whose generation moved
    get fresh optimizer state, and the negatives pool is the tags now in use."""

    def __init__(self, steps: HogwildSteps, arrays: dict[str, np.ndarray],
                 replica: DeviceReplica | None = None):
        self.steps, self.arrays, self.replica = steps, arrays, replica
        self._lock = threading.Lock()
        self.seen = {k: int(arrays[f"{k}.row_generation"].max(initial=0))
                     for k in ("words", "tags")}
        steps.set_pool(np.flatnonzero(arrays["tags.active"]))

    def sync(self) -> None:
        with self._lock:
            moved = {}
            for kind in ("words", "tags"):
                gen = self.arrays[f"{kind}.row_generation"]
                now = int(gen.max(initial=0))
                moved[kind] = np.flatnonzero(gen > self.seen[kind]).tolist() \
                    if now > self.seen[kind] else []
                self.seen[kind] = now
            if moved["words"] or moved["tags"]:
                self.steps.reset_rows(moved["words"], moved["tags"])
                if self.replica is not None:  # the parent's new rows into the device copy
                    self.replica.pull_rows(moved["words"], moved["tags"])
            if moved["tags"]:
                self.steps.set_pool(np.flatnonzero(self.arrays["tags.active"]))


def _idle_priority() -> None:
    """SCHED_IDLE (Linux): run only when no other task wants the CPU; else the lowest nice."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
