"""The author-history component on a hand-built case."""

from collections import Counter

import numpy as np

from tagspace.dataset import Post
from tagspace.personalize import AuthorProfiles, PersonalizedScorer, personalize_scores, tune_weight
from tagspace.vocab import Vocabulary

TAGS = Vocabulary(["news", "cats", "nyc"], [10, 5, 1])


class FixedScorer:
    """Content scores that prefer 'news' for every post."""

    tags = TAGS

    def scores(self, posts):
        return np.tile(np.array([1.0, 0.0, -1.0]), (len(posts), 1))


def post(user, tags=()):
    return Post("p", user, None, ("hello",), tuple(tags))


def test_profile_counts_and_unknown_author_falls_back_to_content():
    profiles = AuthorProfiles.from_posts([post("u1", ["nyc"]), post("u1", ["nyc", "cats"]),
                                          post(None, ["news"])])
    assert profiles.get("u1") == Counter({"nyc": 2, "cats": 1})
    assert profiles.get("stranger") is None and len(profiles) == 1
    scorer = PersonalizedScorer(FixedScorer(), profiles, weight=4.0)
    rows = scorer.scores([post("u1"), post("stranger")])
    assert np.argmax(rows[0]) == 2  # 'nyc', the author's favourite, beats the content's 'news'
    assert np.argsort(-rows[1]).tolist() == [0, 1, 2]  # content order unchanged


def test_weight_zero_is_content_only_and_unknown_history_tags_ignored():
    content = np.array([[3.0, 1.0, 2.0]])
    out = personalize_scores(content, TAGS, [{"cats": 5, "never-seen": 9}], weight=0.0)
    assert np.argsort(-out[0]).tolist() == [0, 2, 1]
    boosted = personalize_scores(content, TAGS, [{"cats": 5, "never-seen": 9}], weight=1.0)
    z = (content - content.mean()) / content.std()
    np.testing.assert_allclose(boosted[0], z[0] + np.array([0, np.log(6), 0]))


def test_tuning_picks_a_weight_that_helps_on_validation():
    profiles = AuthorProfiles.from_posts([post("u1", ["nyc"]), post("u2", ["cats"])])
    valid = [post("u1", ["nyc"]), post("u2", ["cats"]), post("u3", ["news"])]
    weight, results = tune_weight(FixedScorer(), profiles, valid, grid=(0.0, 0.5, 4.0))
    assert results[0.0].p_at_1 < results[weight].p_at_1
    assert results[weight].p_at_1 == 1.0 and weight == 4.0
