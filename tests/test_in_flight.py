"""daemon.in_flight: the HTTP side counts requests in flight, training waits for them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from daemon.in_flight import InFlight, shared_counts, wait_for_idle_serving
from daemon.metrics import Metrics
from daemon.train_process import TrainingProcess
from tests.test_daemon_api import client
from tests.test_train_process import TRAIN
from tests.test_trainer import accounted, online_with_topics, value, wait_for


def test_each_serving_process_counts_in_its_own_slot():
    counts = shared_counts().numpy()
    first, second = InFlight(counts, 0), InFlight(counts, 3)
    first.begin()
    second.begin()
    second.begin()
    assert counts[0] == 1 and counts[3] == 2 and counts.sum() == 3
    second.end()
    second.end()
    first.end()
    assert not counts.any()
    InFlight().begin()  # nothing shared: nothing to count, no error
    with pytest.raises(ValueError, match="slot"):
        InFlight(counts, len(counts))


def test_waiting_ends_when_the_requests_are_answered_or_the_limit_passes():
    counts = np.zeros(4, dtype=np.int32)
    assert wait_for_idle_serving(counts, 5.0) == 0.0
    counts[1] = 1
    threading.Timer(0.2, lambda: counts.__setitem__(1, 0)).start()
    waited = wait_for_idle_serving(counts, 5.0)
    assert 0.15 < waited < 2.0
    counts[2] = 1
    assert 0.25 < wait_for_idle_serving(counts, 0.3) < 2.0  # the limit
    stop = np.ones(1, dtype=np.int32)
    assert wait_for_idle_serving(counts, 5.0, stop) < 0.5  # stopping ends it too


def test_the_gate_counts_a_request_while_it_is_answered():
    seen = []
    counts = np.zeros(2, dtype=np.int32)

    def suggest(text, k, user):  # type: ignore[no-untyped-def]
        seen.append(int(counts[1]))
        return [("pasta", 1.0, True)]
    c = client(suggest=suggest, in_flight=InFlight(counts, 1))
    assert c.post("/v1/suggest", json={"text": "garlic", "k": 1}).status_code == 200
    assert seen[-1] == 1 and counts[1] == 0


def test_the_training_process_steps_only_between_requests():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = TrainingProcess(online, metrics, workers=1, batch_size=4, queue_size=64,
                              train=TRAIN, yield_max_s=30.0)
    counts = online._shared["in_flight"].numpy()
    trainer.start()
    try:
        trainer.offer(stream)  # no request in flight: trained as soon as the child is up
        wait_for(lambda: trainer.idle() and accounted(metrics) == len(stream), 60)
        steps, before = trainer.steps, online.model.tag_emb.detach().clone()
        assert steps > 0
        counts[0] = 1  # a request being answered, for as long as this lasts
        trainer.offer(stream)
        time.sleep(2.0)
        assert trainer.steps == steps and torch.equal(online.model.tag_emb.detach(), before)
        counts[0] = 0
        wait_for(lambda: trainer.idle() and accounted(metrics) == 2 * len(stream), 60)
        assert trainer.steps > steps
        assert value(metrics, "tagspace_training_yielded_seconds_total") > 1.5
    finally:
        counts[0] = 0
        trainer.stop(5.0)
