"""Document recommendation (paper 4.3): max cosine over history, candidate draw, metrics."""

import numpy as np
import pytest
import scipy.sparse as sps

from tagspace.dataset import Post
from tagspace.recommend import build_task, evaluate_recommendation, max_cosine_scores


def test_max_cosine_over_history_dense_and_sparse():
    history = np.array([[1.0, 0.0], [0.0, 1.0]])
    candidates = np.array([[0.6, 0.8], [-1.0, 0.0], [1.0, 0.0]])
    expected = [0.8, 0.0, 1.0]  # each candidate's best match among the history posts
    np.testing.assert_allclose(max_cosine_scores(history, candidates), expected)
    np.testing.assert_allclose(
        max_cosine_scores(sps.csr_matrix(history), sps.csr_matrix(candidates)), expected)


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


def test_metrics_count_candidates_scoring_strictly_higher():
    task = build_task(posts(n_users=3), negatives=4, seed=0)
    # user 0: target best; user 1: two candidates above it; user 2: 60 would be needed for R@50
    scores = {0: [9, 1, 1, 1, 1], 1: [5, 6, 7, 1, 1], 2: [0, 1, 1, 1, 1]}
    m = evaluate_recommendation(task, lambda u, c: np.asarray(scores[u], float))
    assert (m.p_at_1, m.r_at_10, m.r_at_50, m.n_users) == (1 / 3, 1.0, 1.0, 3)


def test_history_file_protocol_and_errors():
    history = posts(n_users=5, per_user=2)
    later = [Post(f"v{u}-{i}", f"u{u}", float(i), ("w",), ()) for u in range(5) for i in (1, 0)]
    task = build_task(later, negatives=3, seed=0, history_posts=history)
    assert all(task.posts[t].post_id.endswith("-0") and task.posts[t].post_id.startswith("v")
               for t in task.targets)  # the first later post is the target
    with pytest.raises(ValueError, match="negatives"):
        build_task(posts(), negatives=0)
