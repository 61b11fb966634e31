"""Contract metrics on hand-computed cases."""

import numpy as np
import pytest

from tagspace.metrics import gold_ranks, ranking_metrics


def test_gold_ranks_with_ties_broken_by_id():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert gold_ranks(scores, [np.array([1, 3, 2, 0])])[0].tolist() == [1, 2, 3, 4]


def test_hand_computed_metrics_with_unknown_gold_tags():
    # N = 5 tags. Post A: gold ranks 1 and 7 (rank 7 > 5? no: ranks within 1..5) -> use 1 and 4,
    # plus one unknown gold tag. Post B: gold rank 2. Post C: only unknown gold tags (2 of them).
    known = [np.array([1, 4]), np.array([2]), np.array([], np.int64)]
    unknown = [1, 0, 2]
    m = ranking_metrics(known, unknown, n_tags=5)
    assert m.n_posts == 3 and m.n_gold_tags == 6
    assert m.p_at_1 == pytest.approx(1 / 3)  # only A has its top tag in G
    assert m.r_at_10 == pytest.approx(3 / 6)  # ranks 1, 4, 2 are in the top 10
    assert m.mean_rank == pytest.approx((1 + 4 + 2 + 6 * 3) / 6)  # unknown -> N + 1 = 6
    assert m.p_at_1_known == pytest.approx(1 / 2)  # C dropped: no known gold tag
    assert m.r_at_10_known == pytest.approx(3 / 3)
    assert m.mean_rank_known == pytest.approx(7 / 3)


def test_recall_is_micro_averaged():
    # Post 1: 1 of 1 gold in top 10; post 2: 1 of 3. Micro: 2/4 (macro would be 2/3).
    m = ranking_metrics([np.array([3]), np.array([5, 11, 12])], [0, 0], n_tags=20)
    assert m.r_at_10 == pytest.approx(0.5)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        ranking_metrics([], [], n_tags=3)
