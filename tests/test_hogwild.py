import numpy as np
import pytest
import torch

from tagspace.hogwild import HogwildTrainer, HogwildWorker, TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel


def make_model():
    torch.manual_seed(0)
    return TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30, n_tags=6))


def test_workers_write_into_the_shared_model():
    model = make_model()
    before = model.encoder.conv.weight.detach().clone()
    tags_before = model.tag_emb.detach().clone()
    worker = HogwildWorker(model, TrainConfig(lr=0.1), rank=0, pad_id=0, unk_id=1)
    stats = worker.step([np.array([2, 3, 4])] * 4, [np.array([1])] * 4)
    assert stats.violating > 0
    assert not torch.equal(model.encoder.conv.weight, before)
    assert (model.tag_emb != tags_before).any(1)[1]  # the positive moved


def changed_rows(table: torch.Tensor, before: torch.Tensor) -> set[int]:
    return set(np.flatnonzero((table != before).any(1).numpy()).tolist())


def test_a_step_changes_exactly_the_rows_its_batch_touches():
    torch.manual_seed(0)
    model = TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30, n_tags=50))
    with torch.no_grad():  # negatives 10-12 score as the positive 7 does: each one violates
        model.tag_emb[[10, 11, 12]] = model.tag_emb[7].clone()
    words_before, tags_before = model.word_emb.detach().clone(), model.tag_emb.detach().clone()
    worker = HogwildWorker(model, TrainConfig(lr=0.1, negatives=20), rank=0, pad_id=0, unk_id=1)
    worker.negative_pool = np.array([7, 10, 11, 12])  # 7 is gold: drawn, but never pushed down
    stats = worker.step([np.array([2, 3, 4]), np.array([5, 6])], [np.array([7])] * 2)
    assert stats.violating == 2
    # sparse updates: the positive and the violating negatives move, the other 46 tags do not
    assert changed_rows(model.tag_emb, tags_before) == {7, 10, 11, 12}
    # the batch's words move (and the padding row, which the convolution windows read)
    assert changed_rows(model.word_emb, words_before) - {0} == {2, 3, 4, 5, 6}
    from tagspace.batch import make_batch

    with torch.no_grad():  # and in the right direction: the positive now beats the tied ones
        scores = model.score_all(model.embed_posts(*make_batch(
            [np.array([2, 3, 4]), np.array([5, 6])], model.config, 0, 1)))
    assert (scores[:, 7:8] > scores[:, 10:13]).all()


def test_workers_have_their_own_rngs():
    model = make_model()
    a = HogwildWorker(model, TrainConfig(seed=3), rank=0, pad_id=0, unk_id=1)
    b = HogwildWorker(model, TrainConfig(seed=3), rank=1, pad_id=0, unk_id=1)
    assert a.rng.integers(1 << 30) != b.rng.integers(1 << 30)


# Device-agnostic: every test taking ``device`` runs on the GPU too where one is present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize(("warp", "bf16", "batching"), [
    ("block", "off", "host"), ("block", "on", "host"), ("sequential", "off", "host"),
    ("block", "off", "device"),  # batches packed on the model's device, drawn there
])
def test_threads_learn_a_separable_toy_problem(warp, bf16, batching):
    model = make_model()
    rng = np.random.default_rng(0)
    from tagspace.batch import EncodedPosts

    words = [rng.integers(2 + 4 * (t % 6), 6 + 4 * (t % 6), size=5) for t in range(300)]
    tags = [np.array([t % 6]) for t in range(300)]
    data = EncodedPosts(words, tags, np.zeros(300, np.int64))
    trainer = HogwildTrainer(model, TrainConfig(epochs=4, workers=2, lr=0.05, warp=warp,
                                                batch_size=8, bf16=bf16,
                                                batching=batching), 0, 1)
    assert trainer.workers[0].bf16 == (bf16 == "on")
    history = trainer.fit(data, progress=False)
    assert history[-1].loss < history[0].loss
    from tagspace.batch import make_batch

    with torch.no_grad():
        scores = model.score_all(model.embed_posts(*make_batch(words[:60], model.config, 0, 1)))
    accuracy = (scores.argmax(1).numpy() == np.array([t[0] for t in tags[:60]])).mean()
    assert accuracy > 0.9


def test_config_validation():
    with pytest.raises(ValueError, match="warp"):
        TrainConfig(warp="softmax")
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=0)
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16="fast")
    with pytest.raises(RuntimeError, match="device"):
        TrainConfig(device="gpu0")
    with pytest.raises(ValueError, match="batching"):
        TrainConfig(batching="gpu")
    with pytest.raises(ValueError, match="block"):
        TrainConfig(batching="device", warp="sequential")


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_runs_where_the_model_is(device):
    """The whole step on the model's device: batches, negatives, gradients, AdaGrad state."""
    torch.manual_seed(0)
    model = TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30, n_tags=50,
                                      word_tag_share=True)).to(device)
    before = model.tag_emb.detach().clone()
    worker = HogwildWorker(model, TrainConfig(lr=0.1, negatives=20, device=device), 0, 0, 1)
    stats = worker.step([np.array([2, 3, 4]), np.array([5, 6])], [np.array([7]), np.array([8])])
    assert stats.violating > 0
    assert model.tag_emb.device.type == torch.device(device).type
    assert worker._tag_acc.device == model.tag_emb.device
    assert (model.tag_emb != before).any(1)[[7, 8]].all()


@pytest.mark.parametrize("device", DEVICES)
def test_train_tagger_on_a_device_returns_a_model_in_host_memory(device):
    from tagspace.dataset import Post
    from tagspace.training import train_tagger

    posts = [Post(f"p{i}", None, None, (f"w{i % 3}", f"x{i % 5}"), (f"t{i % 3}",))
             for i in range(30)]
    tagger = train_tagger(posts, "tagspace", ModelConfig(dim=8, hidden=16),
                          TrainConfig(epochs=1, workers=1, device=device), progress=False)
    assert tagger.model.word_emb.device.type == "cpu"
    assert tagger.embed_all([["w1", "x2"]]).shape == (1, 8)


def test_the_sequential_sampler_refuses_a_model_off_the_cpu():
    model = make_model().to("meta")  # no storage: enough to see the check, on any machine
    with pytest.raises(ValueError, match="block WARP"):
        HogwildWorker(model, TrainConfig(warp="sequential"), rank=0, pad_id=0, unk_id=1)


def test_gold_draws_are_masked_exactly_as_a_full_comparison_would():
    from tagspace.hogwild import _not_gold

    rng = np.random.default_rng(0)
    for _ in range(100):
        negs = rng.integers(0, 30, size=int(rng.integers(1, 60)))
        gold = [rng.integers(0, 30, size=int(rng.integers(1, 4)))
                for _ in range(int(rng.integers(1, 9)))]
        every_pair = np.array([[n not in g for n in negs] for g in gold])
        np.testing.assert_array_equal(_not_gold(negs, gold), every_pair)
