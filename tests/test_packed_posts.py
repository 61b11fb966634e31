"""Batches packed on the model's device are the batches ``make_batch`` builds, and train."""

import numpy as np
import pytest
import torch

from tagspace.batch import EncodedPosts, make_batch
from tagspace.hogwild import HogwildWorker, TrainConfig, _not_gold
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.packed_posts import PackedPosts

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def posts(n: int = 40, seed: int = 0) -> EncodedPosts:
    rng = np.random.default_rng(seed)
    words = [rng.integers(2, 30, size=int(rng.integers(0, 9))) for _ in range(n)]
    tags = [rng.integers(0, 12, size=int(rng.integers(0, 4))) for _ in range(n)]
    return EncodedPosts(words, tags, np.zeros(n, np.int64))


@pytest.mark.parametrize("encoder", ["conv", "bag"])
def test_a_packed_batch_is_the_batch_make_batch_builds(encoder):
    data = posts()
    config = ModelConfig(encoder=encoder, dim=8, hidden=16, n_words=30, n_tags=12)
    packed = PackedPosts(data, config, pad_id=0, unk_id=1, device="cpu")
    usable = [i for i, t in enumerate(data.tags) if len(t)]
    assert len(packed) == len(usable) < len(data)  # posts without a known tag are left out
    rng = np.random.default_rng(1)
    for _ in range(20):
        rows = rng.choice(len(packed), size=int(rng.integers(1, 12)), replace=False)
        batch = packed.batch(rows)
        ids, mask = make_batch([data.words[usable[r]] for r in rows], config, 0, 1)
        assert torch.equal(batch.ids, ids)  # empty posts read as one <unk>, as there
        assert torch.equal(batch.mask, mask)
        for row, r in enumerate(rows):
            gold = data.tags[usable[r]]
            np.testing.assert_array_equal(batch.gold[row, : len(gold)].numpy(), gold)
            assert (batch.gold[row, len(gold):] == -1).all()
        negs = rng.integers(0, 12, size=30)
        expected = _not_gold(negs, [data.tags[usable[r]] for r in rows])
        np.testing.assert_array_equal(batch.not_gold(torch.from_numpy(negs)).numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positives", ["one", "all"])
def test_a_packed_step_moves_the_positives_and_the_violators_only(device, positives):
    torch.manual_seed(0)
    model = TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30, n_tags=50)).to(device)
    with torch.no_grad():  # negatives 10-12 score as the positives 7 and 8 do: each violates
        model.tag_emb[[10, 11, 12]] = model.tag_emb[7].clone()
        model.tag_emb[8] = model.tag_emb[7].clone()
    tags_before = model.tag_emb.detach().clone()
    data = EncodedPosts([np.array([2, 3, 4]), np.array([5, 6])],
                        [np.array([7, 8]), np.array([7])], np.zeros(2, np.int64))
    worker = HogwildWorker(model, TrainConfig(lr=0.1, negatives=20, positives=positives,
                                              device=device), 0, 0, 1)
    worker.negative_pool = np.array([7, 8, 10, 11, 12])  # gold draws never pushed down
    packed = PackedPosts(data, model.config, 0, 1, device)
    stats = worker.step_packed(packed.batch(np.array([0, 1])))
    assert stats.examples == 2 and stats.violating == (3 if positives == "all" else 2)
    moved = set(np.flatnonzero((model.tag_emb != tags_before).any(1).cpu().numpy()).tolist())
    assert {10, 11, 12} <= moved <= {7, 8, 10, 11, 12}
    assert 7 in moved  # the second post's only positive


def test_packed_draws_follow_the_worker_seed():
    def draws(seed: int, rank: int) -> torch.Tensor:
        worker = HogwildWorker(TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30)),
                               TrainConfig(seed=seed), rank, 0, 1)
        return torch.randint(1 << 30, (4,), generator=worker._device_generator())

    assert torch.equal(draws(3, 0), draws(3, 0))
    assert not torch.equal(draws(3, 0), draws(3, 1))


def test_an_epoch_gives_every_post_once_in_batches_of_similar_length():
    data = posts(n=500, seed=2)
    packed = PackedPosts(data, ModelConfig(dim=8, hidden=16, n_words=30, n_tags=12), 0, 1, "cpu")
    batches = list(packed.epoch(np.random.default_rng(0), batch_size=16, bucket=4))
    assert sum(len(b) for b in batches) == len(packed)
    # each post once: the batches' rows (padding dropped) are the packed rows
    rows = sorted(tuple(r[r != 0]) for b in batches for r in b.ids.numpy())
    assert rows == sorted(tuple(r[r != 0]) for r in packed.ids.numpy())
    # by length: a batch's widest post is no wider than a random batch's, on average narrower
    random_widths = [int(packed.lengths[np.random.default_rng(k).choice(len(packed), 16)].max())
                     for k in range(len(batches))]
    assert np.mean([b.ids.shape[1] for b in batches]) < np.mean(random_widths)


def test_draws_in_posts_equals_comparing_every_word():
    from tagspace.hogwild import _draws_in_posts

    rng = np.random.default_rng(0)
    for _ in range(50):
        present = torch.from_numpy(rng.integers(-1, 15, size=(int(rng.integers(1, 6)), 7)))
        negs = torch.from_numpy(rng.integers(0, 15, size=int(rng.integers(1, 40))))
        every = (present.unsqueeze(1) == negs[None, :, None]).any(-1)
        assert torch.equal(_draws_in_posts(present, negs), every)
