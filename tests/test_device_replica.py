"""The training process's copy of the model on a device (daemon.device_replica), tested with a
copy on the CPU: the same code moves rows between host memory and a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daemon.device_replica import DeviceReplica
from daemon.train_process import TrainingProcess
from tagspace.hogwild import TrainConfig
from tagspace.online_steps import HogwildSteps
from tests.test_train_process import TRAIN
from tests.test_trainer import online_with_topics

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rows_changed(after: torch.Tensor, before: torch.Tensor) -> set[int]:
    return set(np.flatnonzero((after != before).any(1).numpy()).tolist())


def replica_and_steps(device: str):  # type: ignore[no-untyped-def]
    online, stream = online_with_topics()
    generations = (online.words.row_generation, online.tags.row_generation)
    replica = DeviceReplica(online.model, device, generations, publish_s=3600.0)
    steps = HogwildSteps(replica.model, TRAIN, online.tagger.pad_id, online.tagger.unk_id,
                         generations, on_applied=replica.publish_rows)
    steps.set_pool(np.flatnonzero(online.tags.active))
    return online, stream, replica, steps


@pytest.mark.parametrize("device", DEVICES)
def test_a_steps_rows_reach_the_shared_model_at_once_and_the_layers_when_published(device):
    online, stream, replica, steps = replica_and_steps(device)
    shared = online.model
    words, tags = shared.word_emb.detach().clone(), shared.tag_emb.detach().clone()
    conv = shared.encoder.conv.weight.detach().clone()
    step = steps.step(online.encode(stream[:8]))
    assert step.examples == 8
    trained_words = rows_changed(replica.model.word_emb.detach().cpu(), words)
    trained_tags = rows_changed(replica.model.tag_emb.detach().cpu(), tags)
    assert trained_words and trained_tags
    # the rows the step changed, and only those, are in the shared tables already
    assert rows_changed(shared.word_emb.detach(), words) == trained_words
    assert rows_changed(shared.tag_emb.detach(), tags) == trained_tags
    for rows, table, mine in ((trained_tags, shared.tag_emb, replica.model.tag_emb),
                              (trained_words, shared.word_emb, replica.model.word_emb)):
        index = sorted(rows)
        torch.testing.assert_close(table.detach()[index], mine.detach().cpu()[index])
    # the layers wait for their publication
    assert torch.equal(shared.encoder.conv.weight.detach(), conv)
    assert not replica.publish_layers()  # publish_s has not passed
    assert replica.publish_layers(force=True)
    torch.testing.assert_close(shared.encoder.conv.weight.detach(),
                               replica.model.encoder.conv.weight.detach().cpu())


def test_a_row_reassigned_during_the_step_keeps_the_parents_value():
    online, stream, replica, steps = replica_and_steps("cpu")
    batch = online.encode(stream[:8])
    row = int(batch.gold[0][0])
    # the parent gives that tag row to a new tag after the batch was encoded
    online.tags.row_generation[row] = batch.since[1] + 1
    fresh = torch.full((online.model.config.dim,), 0.5)
    online.model.tag_emb.data[row] = fresh
    steps.step(batch)
    assert torch.equal(online.model.tag_emb.detach()[row], fresh)
    replica.pull_rows([], [row])  # what the row watch does before the next step
    assert torch.equal(replica.model.tag_emb.detach()[row], fresh)


def test_the_parents_word_tag_links_reach_the_copy():
    online, _, replica, _ = replica_and_steps("cpu")
    online.model.word_to_tag[3] = 5
    assert replica.model.word_to_tag[3] != 5
    replica.pull_rows([3], [])
    assert replica.model.word_to_tag[3] == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_training_process_on_cuda_without_a_gpu_fails_at_once():
    online, _ = online_with_topics()
    with pytest.raises(ValueError, match="no CUDA device"):
        TrainingProcess(online, None, workers=1, batch_size=4, queue_size=8,  # type: ignore[arg-type]
                        train=TrainConfig(device="cuda"))
