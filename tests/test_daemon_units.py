"""Daemon parts without servers: model versions, Redis backpressure, refusal of bad settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon.metrics import RollingRate
from daemon.model_hub import ModelHub
from tagspace.checkpoint import Checkpoint, save_checkpoint
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace
from tests.test_online import post

SMALL = ModelConfig(encoder="conv", dim=8, hidden=16, kernel=3, dropout=0.0)
TRAIN = TrainConfig(lr=0.05, batch_size=4, negatives=10, positives="all")
CAP = Capacity(words=50, tags=10, min_word_count=1, min_tag_count=1)


def test_model_hub_starts_fresh_then_resumes_its_latest_checkpoint(tmp_path):
    hub = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL, keep=2)
    assert (hub.source, hub.version) == ("fresh", 1)
    hub.online.observe(post(1, "maple syrup", ["breakfast"]), clock=1.0)
    for _ in range(3):
        hub.checkpoint()
    assert hub.version == 4
    assert sorted(p.name for p in hub.checkpoints.glob("v*")) == ["v00000003", "v00000004"]
    again = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL)
    assert (again.source, again.version) == ("checkpoint", 4)
    assert again.online.tags.get("breakfast") == hub.online.tags.get("breakfast")


def test_model_hub_loads_a_tagspace_train_output(tmp_path):
    online = OnlineTagSpace.fresh(SMALL, CAP, TRAIN)
    online.observe(post(1, "maple syrup", ["breakfast"]), clock=1.0)
    save_checkpoint(tmp_path / "trained", Checkpoint(online.snapshot()))
    hub = ModelHub(tmp_path / "trained", Capacity(words=80, tags=20), TRAIN, SMALL)
    assert (hub.source, hub.version) == ("trained", 1)
    assert hub.online.tags.get("breakfast") is not None and len(hub.online.tags) == 20


def test_rolling_rate_forgets_old_values():
    rate = RollingRate(size=2)
    rate.add(0, 1)
    rate.add(1, 1)
    rate.add(1, 1)
    assert rate.rate() == 1.0


def test_daemon_refuses_a_bad_setting_by_name(tmp_path: Path):
    tagspace = Path(sys.executable).parent / "tagspace"
    run = subprocess.run([str(tagspace), "daemon", "--workers", "0"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "workers" in run.stderr and "TAGSPACE_WORKERS" in run.stderr
    run = subprocess.run([str(tagspace), "daemon"], capture_output=True, text=True, timeout=60,
                         env={"TAGSPACE_POSTS_TOPIC": "bad topic", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2 and "posts_topic" in run.stderr


def test_the_settings_documentation_lists_every_setting():
    from daemon.config import settings_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "DAEMON.md").read_text()
    assert settings_table() in doc  # regenerate with: python -c "...settings_table()"


def test_a_serving_replica_loads_the_versions_a_trainer_publishes(tmp_path):
    trainer = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL)
    replica = ModelHub(tmp_path / "m", CAP, TRAIN, SMALL)
    assert replica.reload_if_newer() is False  # nothing published yet
    trainer.online.observe(post(1, "maple syrup", ["breakfast"]), clock=1.0)
    trainer.checkpoint()
    assert replica.reload_if_newer() is True and replica.version == trainer.version == 2
    assert replica.online.tags.get("breakfast") is not None
    assert replica.reload_if_newer() is False  # already current
