"""Training in a child process (daemon.train_process) with a real small online model: its
updates land in the parent's model, rows admitted after it started are trained with fresh
state, every offered post is trained on or counted, ingestion never waits, and a killed child
is restarted with the weights kept."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
import torch

from daemon.metrics import Metrics
from daemon.train_process import TrainingProcess
from tagspace.hogwild import TrainConfig
from tests.test_online import post
from tests.test_trainer import accounted, online_with_topics, skipped, trained, value, wait_for

TRAIN = TrainConfig(lr=0.05, batch_size=4, negatives=8, positives="all", workers=2)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def started(online, metrics: Metrics, queue_size: int = 64,  # type: ignore[no-untyped-def]
            train: TrainConfig = TRAIN) -> TrainingProcess:
    trainer = TrainingProcess(online, metrics, workers=2, batch_size=4, queue_size=queue_size,
                              train=train)
    trainer.start()
    return trainer


# on a GPU too where one is present: the steps on a copy there (daemon.device_replica)
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_childs_steps_change_the_parents_model_and_every_post_is_accounted(device):
    online, stream = online_with_topics()
    metrics = Metrics()
    before = online.model.tag_emb.detach().clone()
    trainer = started(online, metrics, train=dataclasses.replace(TRAIN, device=device))
    try:
        for _ in range(5):
            trainer.offer(stream)
        wait_for(lambda: trainer.idle() and accounted(metrics) == 5 * len(stream), 60)
        assert trainer.steps > 0 and trained(metrics) > 0
        # the parent's own tensors moved (shared memory, or rows written back from the GPU)
        assert not torch.equal(online.model.tag_emb.detach(), before)
        assert torch.isfinite(online.model.tag_emb).all()
        # (the loss gauge is the last step's: 0 once the toy topics are separated, so no check)
        assert 0 < value(metrics, "tagspace_training_lag_seconds") < 60
    finally:
        trainer.stop(5.0)


def test_a_tag_admitted_after_start_is_trained_by_the_child():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = started(online, metrics)
    try:
        news = [post(100 + i, "brand new snow skiing", ["ski"]) for i in range(4)]
        for p in news:
            online.observe(p, clock=float(p.ts))
        row = online.tags.get("ski")
        assert row is not None
        start = online.model.tag_emb.detach()[row].clone()
        trainer.offer(news * 4 + stream)
        wait_for(lambda: trainer.idle() and accounted(metrics) == 16 + len(stream), 60)
        assert skipped(metrics, "tag_not_admitted") == 0
        assert not torch.equal(online.model.tag_emb.detach()[row], start)
    finally:
        trainer.stop(5.0)


def test_offer_never_blocks_and_drops_the_oldest_when_full():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = TrainingProcess(online, metrics, workers=1, batch_size=4, queue_size=8,
                              train=TRAIN)  # not started: nothing drains the buffer
    t0 = time.perf_counter()
    dropped = sum(trainer.offer(stream) for _ in range(10))
    assert time.perf_counter() - t0 < 5.0
    assert dropped == 10 * len(stream) - 8 and skipped(metrics, "queue_full") == dropped
    assert trainer.queued() == 8
    trainer.stop(1.0)
    assert skipped(metrics, "stopping") == 8


def test_a_killed_child_is_restarted_and_training_goes_on():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = started(online, metrics)
    try:
        trainer.offer(stream)
        wait_for(lambda: trainer.steps > 0, 60)
        os.kill(trainer._proc.pid, signal.SIGKILL)
        wait_for(lambda: trainer.restarts == 1, 30)
        steps = trainer.steps
        for _ in range(3):
            trainer.offer(stream)
        wait_for(lambda: trainer.steps > steps, 60)
        assert value(metrics, "tagspace_trainer_restarts_total") == 1
    finally:
        trainer.stop(5.0)
