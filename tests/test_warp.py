"""Both WARP versions: the paper's weights, positives never negatives, and how closely the block
version's expected gradient matches the sequential one (exactly in the block size's limit)."""

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


# The toy problem's numbers: tags 0, 2, 6, 8 violate t+ = 1 (score > 1.0 - 0.1), 4 of the 8 tags
# that are not gold; a uniform draw over all 10 tags is valid (not gold) with probability 0.8.
N_TAGS, MARGIN, CAP = 10, 0.1, 1000
VIOLATORS, Q, VALID = [0, 2, 6, 8], 0.5, 0.8


def exact_gradient(weight: float) -> np.ndarray:
    """The mean gradient on every tag's score for a mean step weight ``weight``: the positive
    pulled up by all of it, each violator (all equally likely) pushed down by a quarter."""
    grad = np.zeros(N_TAGS)
    grad[VIOLATORS], grad[1] = weight / 4, -weight
    return grad


def sequential_weight() -> float:
    """E[L(floor((N - 1) / k))] for k ~ Geometric(Q) capped at CAP: the paper's mean weight."""
    k = np.arange(1, CAP + 1)
    return float(np.sum(Q * (1 - Q) ** (k - 1) * [rank_weight(N_TAGS, t) for t in k]))


def block_weight(size: int) -> float:
    """The block version's mean weight with ``size`` draws: E[weight(v / n)] over n ~ Bin(size,
    VALID) valid draws of which v ~ Bin(n, Q) violate (no valid draw: weight 0)."""
    from scipy.stats import binom

    n, v = np.array([(n, v) for n in range(1, size + 1) for v in range(n + 1)]).T
    prob = binom.pmf(n, size, VALID) * binom.pmf(v, n, Q)
    weight = expected_rank_weight(torch.from_numpy(v / n), N_TAGS, CAP).double().numpy()
    return float(prob @ weight)


def sequential_runs(runs: int, rng: np.random.Generator) -> np.ndarray:
    """(runs, N): each run's gradient on every tag's score, the paper's sampler."""
    scores, gold = toy_problem()
    tag_emb = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)
    out = np.zeros((runs, N_TAGS))
    for r in range(runs):
        neg, w, _ = sample_sequential_negatives(
            torch.ones(1, 1), torch.tensor([1.0]), tag_emb, [gold], MARGIN, CAP, rng)
        if neg[0] >= 0:
            out[r, neg[0]] += w[0]
            out[r, 1] -= w[0]
    return out


def block_runs(size: int, runs: int, rng: np.random.Generator) -> np.ndarray:
    """(runs, N): each run's gradient on every tag's score, one block of ``size`` draws."""
    scores, gold = toy_problem()
    out = np.zeros((runs, N_TAGS))
    for r in range(runs):
        negs = rng.integers(N_TAGS, size=size)
        neg_scores = torch.tensor(scores[negs], requires_grad=True)
        pos = torch.tensor([1.0], requires_grad=True)
        valid = torch.from_numpy(~np.isin(negs, gold))[None]
        loss, _ = block_warp_loss(pos, neg_scores[None], valid, N_TAGS, MARGIN, CAP)
        if loss.requires_grad:
            g_neg, g_pos = torch.autograd.grad(loss, [neg_scores, pos], allow_unused=True)
            np.add.at(out[r], negs, g_neg.numpy())
            out[r, 1] += float(g_pos)
    return out


def assert_mean_near(runs: np.ndarray, expected: np.ndarray, slack: float = 0.0) -> None:
    """Monte Carlo mean within 4 standard errors of ``expected`` on every tag (a seeded test,
    and 4 SE would be exceeded by chance about once in 16,000 checks), plus ``slack``."""
    mean = runs.mean(0)
    se = runs.std(0, ddof=1) / np.sqrt(len(runs))
    np.testing.assert_array_less(np.abs(mean - expected), 4 * se + slack + 1e-5)


def test_sequential_sampler_has_the_papers_expected_gradient():
    runs = sequential_runs(4000, np.random.default_rng(1))
    assert set(np.flatnonzero(runs.mean(0) > 0)) == set(VIOLATORS)
    assert_mean_near(runs, exact_gradient(sequential_weight()))
    # weight(p) at the true p is the sequential mean weight, by construction
    assert float(expected_rank_weight(torch.tensor([Q]), N_TAGS, CAP)) == pytest.approx(
        sequential_weight(), rel=1e-6)


def test_block_warp_agrees_with_sequential_for_a_large_block_only():
    """The block version plugs the block's estimate p = v / n into weight(p), which is not linear
    in p: E[weight(p)] != weight(E[p]), so it is biased, and more so the smaller the block."""
    exact = sequential_weight()  # 2.319
    bias = {size: block_weight(size) / exact - 1 for size in (8, 16, 64)}
    # Exact values: -4.4% with 8 draws (1.7% of blocks of 8 hold no violator at all, weight 0,
    # where the paper's sampler nearly always finds one), -1.8% with 16, -0.39% with 64. The
    # bias scales as Var(p) ~ 1 / size (delta method), so about -0.02% with 1,024 draws.
    assert bias[8] == pytest.approx(-0.0437, abs=0.001)
    assert bias[8] < bias[16] < bias[64] < 0 and bias[64] > -0.005

    small = block_runs(8, 4000, np.random.default_rng(2))
    assert set(np.flatnonzero(small.mean(0) > 0)) == set(VIOLATORS)
    assert_mean_near(small, exact_gradient(block_weight(8)))  # the biased mean, as computed
    pull = -small[:, 1]  # the step on the positive: the whole weight, per run
    assert exact - pull.mean() > 4 * pull.std(ddof=1) / np.sqrt(len(pull))  # bias is visible

    large = block_runs(1024, 400, np.random.default_rng(3))
    # within Monte Carlo noise of the paper's, plus the bias bounded by that of 64 draws
    assert_mean_near(large, exact_gradient(exact), slack=abs(bias[64]) * exact)


def test_block_loss_zero_when_positive_wins_by_margin():
    pos = torch.tensor([5.0])
    neg = torch.tensor([[0.0, 1.0, 4.89]])
    loss, stats = block_warp_loss(pos, neg, torch.ones(1, 3, dtype=torch.bool), 100, 0.1, 1000)
    assert float(loss) == 0.0 and stats.violating == 0
    loss, stats = block_warp_loss(pos, neg + 0.02, torch.ones(1, 3, dtype=torch.bool), 100, 0.1,
                                  1000)
    assert float(loss) > 0 and stats.violating == 1
