"""The daemon's training side without servers: OnlineTrainer with a real small online model
(every offered post trained on or counted by reason) and ModelHub's refusal of a diverged
model."""

from __future__ import annotations

import time

import pytest
import torch

from daemon.metrics import Metrics
from daemon.model_hub import ModelDiverged, ModelHub
from daemon.trainer import OnlineTrainer
from tagspace.checkpoint import Checkpoint, save_checkpoint
from tagspace.online import Capacity, OnlineTagSpace
from tests.test_online import post, small_model, topics

CAP = dict(words=64, tags=16, min_word_count=1, min_tag_count=1)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()  # OnlineTrainer.start sets 1 for the whole process
    yield
    torch.set_num_threads(threads)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def skipped(metrics: Metrics, reason: str) -> float:
    return value(metrics, "tagspace_training_posts_skipped_total", reason=reason)


def trained(metrics: Metrics) -> float:
    return value(metrics, "tagspace_training_examples_total")


def accounted(metrics: Metrics) -> float:
    reasons = ("queue_full", "tag_not_admitted", "too_few_tags", "nonfinite", "exploding_loss",
               "stopping", "error")
    return trained(metrics) + sum(skipped(metrics, r) for r in reasons)


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def online_with_topics() -> tuple[OnlineTagSpace, list]:
    online = small_model(**CAP)
    stream = topics(24)
    for p in stream:
        online.observe(p, clock=float(p.ts))
    return online, stream


def test_offered_posts_are_trained_on():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = OnlineTrainer(online, metrics, workers=2, batch_size=4, queue_size=100)
    before = online.model.tag_emb.detach().clone()
    trainer.start()
    try:
        assert trainer.offer(stream) == 0
        wait_for(lambda: trained(metrics) == len(stream))
    finally:
        trainer.stop()
    assert trainer.steps >= len(stream) // 4
    assert accounted(metrics) == len(stream)  # nothing skipped
    assert not torch.equal(online.model.tag_emb.detach(), before)
    assert value(metrics, "tagspace_training_loss") > 0
    assert value(metrics, "tagspace_training_queue_posts") == 0


def test_every_post_not_trained_on_is_counted_by_reason():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = OnlineTrainer(online, metrics, workers=1, batch_size=4, queue_size=8)
    unknown = [post(100 + i, "pasta sauce", ["never_admitted"]) for i in range(3)]
    # not started: the queue fills up, the rest is dropped and counted
    assert trainer.offer(stream[:6] + unknown + stream[6:9]) == 4
    assert skipped(metrics, "queue_full") == 4
    trainer.start()
    try:
        wait_for(lambda: accounted(metrics) == 12)
        assert trained(metrics) == 6 and skipped(metrics, "tag_not_admitted") == 2
    finally:
        trainer.stop()
    assert accounted(metrics) == 12


def test_with_one_tag_in_use_nothing_is_trained_and_it_is_counted():
    online = small_model(**CAP)
    lonely = [post(i, "pasta sauce garlic", ["food"]) for i in range(5)]
    for p in lonely:
        online.observe(p, clock=float(p.ts))
    metrics = Metrics()
    trainer = OnlineTrainer(online, metrics, workers=1, batch_size=2, queue_size=10)
    trainer.start()
    try:
        trainer.offer(lonely)
        wait_for(lambda: accounted(metrics) == 5)
    finally:
        trainer.stop()
    assert skipped(metrics, "too_few_tags") == 5 and trained(metrics) == 0


def test_stop_counts_the_posts_left_in_the_queue_and_those_offered_after():
    online, stream = online_with_topics()
    metrics = Metrics()
    trainer = OnlineTrainer(online, metrics, workers=1, batch_size=4, queue_size=100)
    trainer.offer(stream[:7])  # never started: all 7 are still queued at stop
    trainer.stop()
    assert skipped(metrics, "stopping") == 7
    assert value(metrics, "tagspace_training_queue_posts") == 0
    assert trainer.offer(stream[7:9]) == 2
    assert skipped(metrics, "stopping") == 9 and trained(metrics) == 0


def train_until_accounted(online, metrics, posts):  # type: ignore[no-untyped-def]
    """One worker trains on ``posts`` until each is counted as trained or skipped."""
    trainer = OnlineTrainer(online, metrics, workers=1, batch_size=4, queue_size=100)
    trainer.start()
    try:
        trainer.offer(posts)
        wait_for(lambda: accounted(metrics) == len(posts))
    finally:
        trainer.stop()


def test_a_failed_step_counts_its_posts():
    online, stream = online_with_topics()
    metrics = Metrics()

    def broken(posts):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    online.train = broken  # type: ignore[method-assign]
    train_until_accounted(online, metrics, stream[:6])
    assert skipped(metrics, "error") == 6


def test_a_diverged_model_is_dropped_counted_and_never_trained_on():
    online, stream = online_with_topics()
    with torch.no_grad():
        online.model.encoder.out.bias[0] = float("nan")
    params = {k: v.detach().clone() for k, v in online.model.state_dict().items()}
    metrics = Metrics()
    train_until_accounted(online, metrics, stream[:8])
    assert skipped(metrics, "nonfinite") == 8 and trained(metrics) == 0
    assert value(metrics, "tagspace_training_steps_dropped_total", reason="nonfinite") >= 2
    for k, v in online.model.state_dict().items():  # not one update applied
        torch.testing.assert_close(v, params[k], equal_nan=True, rtol=0, atol=0)


# ModelHub: a diverged model is never checkpointed nor loaded

def hub_at(path, metrics=None) -> ModelHub:  # type: ignore[no-untyped-def]
    online = small_model(**CAP)
    return ModelHub(path, Capacity(**CAP), online.train_config, online.model.config,
                    metrics=metrics)


def test_the_hub_refuses_to_checkpoint_a_diverged_model(tmp_path):
    metrics = Metrics()
    hub = hub_at(tmp_path / "m", metrics)
    for p in topics(6):
        hub.online.observe(p, clock=float(p.ts))
    good = hub.checkpoint()
    with torch.no_grad():
        hub.online.model.tag_emb[0, 0] = float("inf")
    with pytest.raises(ModelDiverged, match="tag_emb"):
        hub.checkpoint()
    assert hub.version == 2
    assert (hub.checkpoints / "LATEST").read_text().strip() == good.name
    assert sorted(p.name for p in hub.checkpoints.glob("v*")) == [good.name]
    assert value(metrics, "tagspace_checkpoints_total", result="diverged") == 1
    again = hub_at(tmp_path / "m")  # a restart resumes from the last good version
    assert again.version == 2 and torch.isfinite(again.online.model.tag_emb).all()


def publish_diverged(hub: ModelHub) -> str:
    """What a trainer never publishes (it refuses): a version with a NaN, written by hand."""
    tagger, arrays = hub.online.snapshot_state()
    with torch.no_grad():
        tagger.model.word_emb[3, 1] = float("nan")
    name = f"v{hub.version + 1:08d}"
    save_checkpoint(hub.checkpoints / name,
                    Checkpoint(tagger, extra={"version": hub.version + 1}, arrays=arrays))
    (hub.checkpoints / "LATEST").write_text(name + "\n")
    return name


def test_a_diverged_version_is_never_served(tmp_path):
    trainer = hub_at(tmp_path / "m")
    for p in topics(6):
        trainer.online.observe(p, clock=float(p.ts))
    trainer.checkpoint()  # version 2: good
    replica = hub_at(tmp_path / "m")
    assert replica.version == 2
    publish_diverged(trainer)  # version 3
    served = replica.online
    assert replica.reload_if_newer() is False and replica.version == 2
    assert replica.online is served
    assert replica.reload_if_newer() is False  # not tried again
    restarted = hub_at(tmp_path / "m")  # start-up skips it too
    assert restarted.version == 2 and torch.isfinite(restarted.online.model.word_emb).all()
