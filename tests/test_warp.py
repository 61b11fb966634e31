"""Both WARP versions: the paper's weights, positives never negatives, agreement in expectation."""

import numpy as np
import pytest
import torch

from tagspace.warp import (
    block_warp_loss,
    expected_rank_weight,
    harmonic,
    rank_weight,
    sample_sequential_negatives,
)


def test_rank_weight_is_harmonic_of_estimated_rank():
    assert harmonic(4).tolist() == pytest.approx([0, 1, 1.5, 1.5 + 1 / 3, 1.5 + 1 / 3 + 0.25])
    # N = 101 tags, first violator on draw 10: rank estimate floor(100 / 10) = 10.
    assert rank_weight(101, 10) == pytest.approx(sum(1 / i for i in range(1, 11)))
    assert rank_weight(101, 200) == 0.0  # estimated rank 0: nothing to fix


def test_expected_weight_limits():
    w = expected_rank_weight(torch.tensor([0.0, 1.0]), n_tags=101, max_trials=1000)
    assert w[0] == 0.0  # no violator: no step
    assert w[1] == pytest.approx(rank_weight(101, 1))  # always on the first draw


def toy_problem():
    scores = np.array([2.0, 1.0, 0.95, 1.5, 0.5, -1.0, 0.99, 0.2, 1.2, 0.0])
    gold = np.array([1, 3])  # tags 1 and 3 are positives; 3 scores above 1 but never a negative
    return scores, gold


def test_sequential_never_takes_a_positive_and_finds_violators():
    scores, gold = toy_problem()
    tag_emb = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)  # f(w, t) = 1 * score
    post = torch.ones(1, 1)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        negs, weights, trials = sample_sequential_negatives(
            post, torch.tensor([1.0]), tag_emb, [gold], margin=0.1, max_trials=1000, rng=rng)
        seen.add(int(negs[0]))
        assert weights[0] == pytest.approx(rank_weight(10, int(trials[0])))
    # violators of t+ = 1 (score 1.0) with margin 0.1: scores > 0.9, gold excluded
    assert seen == {0, 2, 6, 8}


def test_block_and_sequential_agree_in_expectation():
    """Mean gradient on every tag's score, Monte Carlo over both samplers."""
    scores, gold = toy_problem()
    n_tags, margin, trials_cap = len(scores), 0.1, 1000
    tag_emb = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)
    rng = np.random.default_rng(1)
    runs = 4000

    seq_grad = np.zeros(n_tags)
    for _ in range(runs):
        neg, w, _ = sample_sequential_negatives(
            torch.ones(1, 1), torch.tensor([1.0]), tag_emb, [gold], margin, trials_cap, rng)
        if neg[0] >= 0:
            seq_grad[neg[0]] += w[0]
            seq_grad[1] -= w[0]
    seq_grad /= runs

    block_grad = np.zeros(n_tags)
    for _ in range(runs):
        negs = rng.integers(n_tags, size=8)  # a small block: the estimate must still be unbiased
        neg_scores = torch.tensor(scores[negs], requires_grad=True)
        pos = torch.tensor([1.0], requires_grad=True)
        valid = torch.from_numpy(~np.isin(negs, gold))[None]
        loss, _ = block_warp_loss(pos, neg_scores[None], valid, n_tags, margin, trials_cap)
        if loss.requires_grad:
            g_neg, g_pos = torch.autograd.grad(loss, [neg_scores, pos], allow_unused=True)
            np.add.at(block_grad, negs, g_neg.numpy())
            block_grad[1] += float(g_pos)
    block_grad /= runs
    # Same tags pushed down, same push on the positive, within Monte Carlo noise.
    assert set(np.flatnonzero(seq_grad > 0)) == set(np.flatnonzero(block_grad > 0)) == {0, 2, 6, 8}
    np.testing.assert_allclose(block_grad, seq_grad, atol=0.06, rtol=0.15)


def test_block_loss_zero_when_positive_wins_by_margin():
    pos = torch.tensor([5.0])
    neg = torch.tensor([[0.0, 1.0, 4.89]])
    loss, stats = block_warp_loss(pos, neg, torch.ones(1, 3, dtype=torch.bool), 100, 0.1, 1000)
    assert float(loss) == 0.0 and stats.violating == 0
    loss, stats = block_warp_loss(pos, neg + 0.02, torch.ones(1, 3, dtype=torch.bool), 100, 0.1,
                                  1000)
    assert float(loss) > 0 and stats.violating == 1
