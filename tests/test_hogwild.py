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


@pytest.mark.parametrize("warp", ["block", "sequential"])
def test_threads_learn_a_separable_toy_problem(warp):
    model = make_model()
    rng = np.random.default_rng(0)
    from tagspace.batch import EncodedPosts

    words = [rng.integers(2 + 4 * (t % 6), 6 + 4 * (t % 6), size=5) for t in range(300)]
    tags = [np.array([t % 6]) for t in range(300)]
    data = EncodedPosts(words, tags, np.zeros(300, np.int64))
    trainer = HogwildTrainer(model, TrainConfig(epochs=4, workers=2, lr=0.05, warp=warp,
                                                batch_size=8), 0, 1)
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
