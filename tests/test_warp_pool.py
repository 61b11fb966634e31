"""Sequential WARP on an online model: negatives come from the tags in use only."""

import numpy as np
import torch

from tagspace.hogwild import HogwildWorker, TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.warp import rank_weight, sample_sequential_negatives


def test_sequential_draws_only_from_the_pool_and_counts_it_as_n():
    rng = np.random.default_rng(0)
    tags = torch.ones(100, 4)  # every tag violates: the first draw is taken
    post = torch.ones(3, 4)
    pos = torch.zeros(3)
    pool = np.array([3, 17, 42, 60, 99])
    negs, weights, trials = sample_sequential_negatives(
        post, pos, tags, [np.array([3])] * 3, 0.1, 50, rng, pool=pool)
    assert set(negs.tolist()) <= {17, 42, 60, 99}  # in the pool, never the positive
    assert (trials == 1).all()
    np.testing.assert_allclose(weights, rank_weight(len(pool), 1))  # N = 5, not 100


def test_sequential_with_a_pool_of_positives_only_finds_nothing():
    negs, weights, _ = sample_sequential_negatives(
        torch.ones(1, 4), torch.zeros(1), torch.ones(10, 4), [np.array([2, 5])], 0.1, 20,
        np.random.default_rng(0), pool=np.array([2, 5]))
    assert negs.tolist() == [-1] and weights.tolist() == [0.0]


def test_a_sequential_worker_never_pushes_down_a_free_row():
    torch.manual_seed(0)
    model = TagSpaceModel(ModelConfig(dim=8, hidden=16, n_words=30, n_tags=50))
    with torch.no_grad():  # free rows 20-49 would violate any margin: drawn, they would move
        model.tag_emb[20:] = 10.0
    before = model.tag_emb.detach().clone()
    worker = HogwildWorker(model, TrainConfig(lr=0.1, negatives=30, warp="sequential"),
                           rank=0, pad_id=0, unk_id=1)
    worker.negative_pool = np.arange(20)  # the tags in use
    for _ in range(5):
        worker.step([np.array([2, 3, 4]), np.array([5, 6])], [np.array([7])] * 2)
    moved = np.flatnonzero((model.tag_emb != before).any(1).numpy())
    assert len(moved) and moved.max() < 20
