"""Document recommendation (paper 4.3): max cosine over history, candidate draw, metrics."""

import numpy as np
import pytest
import scipy.sparse as sps

from tagspace.dataset import Post
from tagspace.recommend import (
    RecommendTask,
    best_mix_weight,
    build_task,
    max_cosine_matrix,
    metrics_from_scores,
)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("max_rows", [1, 1024])  # one user per batch, or all users in one
def test_max_cosine_over_history_hand_built(sparse, max_rows):
    # posts 0-1: user a's history; 2: a's target; 3-4: b's history; 5: b's target
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    task = RecommendTask(posts=[], users=["a", "b"],
                         histories=[np.array([0, 1]), np.array([3, 4])],
                         targets=np.array([2, 5]), negatives=np.array([[3, 5], [0, 2]]),
                         skipped_users=0)
    matrix = sps.csr_matrix(vectors) if sparse else vectors
    scores = max_cosine_matrix(task, matrix, max_rows=max_rows)
    # each candidate's best match among its user's history posts; column 0 is the target
    expected = [[0.8, 0.0, 1.0], [0.0, 0.0, -0.6]]
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def posts(n_users=30, per_user=3):
    return [Post(f"p{u}-{i}", f"u{u}", float(i), ("w",), ()) for u in range(n_users)
            for i in range(per_user)] + [Post("solo", "lonely", 0.0, ("w",), ())]


def test_task_splits_history_and_target_and_skips_single_post_users():
    task = build_task(posts(), negatives=20, seed=1)
    assert task.skipped_users == 1 and len(task.users) == 30
    for u, user in enumerate(task.users):
        assert [task.posts[i].ts for i in task.histories[u]] == [0.0, 1.0]
        assert task.posts[task.targets[u]].ts == 2.0 and task.posts[task.targets[u]].user_id == user


def test_candidates_are_never_the_users_own_and_are_reproducible():
    a = build_task(posts(), negatives=50, seed=7)
    b = build_task(posts(), negatives=50, seed=7)
    c = build_task(posts(), negatives=50, seed=8)
    np.testing.assert_array_equal(a.negatives, b.negatives)
    assert not np.array_equal(a.negatives, c.negatives)
    for u, user in enumerate(a.users):
        assert all(a.posts[i].user_id != user for i in a.negatives[u])


def test_ties_count_against_the_target():
    # rank = 1 + candidates scoring >= the target. user 0: one candidate ties the best target
    # (rank 2, not P@1); user 1: two candidates above it; user 2: everything ties at 0, as
    # all-zero BoW rows do (rank 12, outside R@10); user 3: target strictly best
    scores = np.zeros((4, 12))
    scores[0] = [9] + [1] * 10 + [9]
    scores[1] = [5, 6, 7] + [1] * 9
    scores[3] = [2] + [1] * 11
    m = metrics_from_scores(scores)
    assert (m.p_at_1, m.r_at_10, m.r_at_50, m.n_users) == (1 / 4, 3 / 4, 1.0, 4)


def interleaved_posts(n_users=6, per_user=4):
    """Users' posts spread over the pool (own indices are not contiguous), plus authorless ones."""
    out = [Post(f"p{u}-{i}", f"u{u}", float(i), ("w",), ()) for i in range(per_user)
           for u in range(n_users)]
    return out + [Post(f"anon{i}", None, 0.0, ("w",), ()) for i in range(3)]


def test_negatives_are_distinct_and_never_the_users_own():
    pool = interleaved_posts()  # 27 posts: each user owns 4, so 23 are others'
    task = build_task(pool, negatives=23, seed=3)
    for u, user in enumerate(task.users):
        others = [i for i, p in enumerate(task.posts) if p.user_id != user]
        assert sorted(task.negatives[u].tolist()) == others  # each other post exactly once
    task = build_task(pool, negatives=12, seed=4)
    assert all(len(set(row.tolist())) == 12 for row in task.negatives)
    with pytest.raises(ValueError, match="not enough posts"):
        build_task(pool, negatives=24)


def test_negative_draw_is_uniform_over_other_users_posts():
    pool = interleaved_posts()
    counts = np.zeros(len(pool))
    for seed in range(400):
        task = build_task(pool, negatives=5, seed=seed)
        np.add.at(counts, task.negatives[0], 1)  # user u0's candidates
    own = [i for i, p in enumerate(pool) if p.user_id == "u0"]
    assert counts[own].sum() == 0
    # 400 x 5 draws over 23 posts: about 87 each, binomial sd ~9; 5 sd either side
    others = np.delete(counts, own)
    assert others.sum() == 2000 and others.min() > 40 and others.max() < 135


def test_mix_weight_is_chosen_by_tuning_quality():
    model = np.array([[0.5, 0.6], [0.5, 0.6]])  # the model alone ranks both targets second
    bow = np.array([[1.0, 0.0], [1.0, 0.0]])  # BoW alone ranks them first
    assert best_mix_weight(model, bow, [0.0, 0.05, 0.5]) == 0.5  # 0.05 is not enough to flip


def test_history_file_protocol_and_errors():
    history = posts(n_users=5, per_user=2)
    later = [Post(f"v{u}-{i}", f"u{u}", float(i), ("w",), ()) for u in range(5) for i in (1, 0)]
    task = build_task(later, negatives=3, seed=0, history_posts=history)
    assert all(task.posts[t].post_id.endswith("-0") and task.posts[t].post_id.startswith("v")
               for t in task.targets)  # the first later post is the target
    with pytest.raises(ValueError, match="negatives"):
        build_task(posts(), negatives=0)
