"""The author-history component on hand-built cases."""

from collections import Counter

import numpy as np

from tagspace.dataset import Post
from tagspace.personalize import (
    AuthorHistory,
    AuthorProfiles,
    PersonalizedScorer,
    PersonalizeWeights,
    combine,
    history_features,
    tune_weights,
)
from tagspace.vocab import Vocabulary

TAGS = Vocabulary(["news", "cats", "nyc"], [10, 5, 1])


class FixedScorer:
    """Content scores that prefer 'news' for every post; posts embed as one-hot topics."""

    tags = TAGS

    def scores(self, posts):
        return np.tile(np.array([1.0, 0.0, -1.0]), (len(posts), 1))

    def embed_tokens(self, token_lists):
        topics = {"kitten": 0, "subway": 1}
        out = np.zeros((len(token_lists), 2), np.float32)
        for i, tokens in enumerate(token_lists):
            for t in tokens:
                if t in topics:
                    out[i, topics[t]] = 1.0
        return out


def post(user, tags=(), text="hello"):
    return Post("p", user, None, tuple(text.split()), tuple(tags))


def test_profile_counts_and_unknown_author_falls_back_to_content():
    profiles = AuthorProfiles.from_posts([post("u1", ["nyc"]), post("u1", ["nyc", "cats"]),
                                          post(None, ["news"])])
    assert profiles.get("u1").counts == Counter({"nyc": 2, "cats": 1})
    assert profiles.get("stranger") is None and len(profiles) == 1
    scorer = PersonalizedScorer(FixedScorer(), profiles, PersonalizeWeights(count=4.0))
    rows = scorer.scores([post("u1"), post("stranger")])
    assert np.argmax(rows[0]) == 2  # 'nyc', the author's favourite, beats the content's 'news'
    assert np.argsort(-rows[1]).tolist() == [0, 1, 2]  # content order unchanged


def test_count_and_popularity_terms_on_standardised_content():
    content = np.array([[3.0, 1.0, 2.0]])
    history = AuthorHistory(Counter({"cats": 5, "never-seen": 9}))
    features = history_features(TAGS, [history])
    popularity = np.log1p(np.array(TAGS.counts, np.float32))
    out = combine(content, features, PersonalizeWeights(), popularity)
    assert np.argsort(-out[0]).tolist() == [0, 2, 1]
    boosted = combine(content, features, PersonalizeWeights(count=1.0, popularity=0.5), popularity)
    z = (content - content.mean()) / content.std()
    np.testing.assert_allclose(boosted[0], z[0] + np.array([0, np.log(6), 0]) + 0.5 * popularity,
                               rtol=1e-6)


def test_similarity_term_picks_the_tag_of_the_most_similar_past_post():
    # The author used #cats on a kitten post and #nyc on a subway post, equally often.
    profiles = AuthorProfiles.from_posts([post("u", ["cats"], "kitten photo"),
                                          post("u", ["nyc"], "subway again")])
    weights = PersonalizeWeights(count=1.0, similarity=4.0)
    scorer = PersonalizedScorer(FixedScorer(), profiles, weights)
    kitten, subway = scorer.scores([post("u", text="my kitten"), post("u", text="subway late")])
    assert np.argmax(kitten) == 1 and np.argmax(subway) == 2
    counts_only = PersonalizedScorer(FixedScorer(), profiles, PersonalizeWeights(count=1.0))
    a, b = counts_only.scores([post("u", text="my kitten"), post("u", text="subway late")])
    np.testing.assert_allclose(a, b)  # without similarity the text cannot choose
    lexical = PersonalizedScorer(FixedScorer(), profiles, PersonalizeWeights(1.0, 0.0, 4.0))
    kitten, subway = lexical.scores([post("u", text="kitten photo"), post("u", text="subway")])
    assert np.argmax(kitten) == 1 and np.argmax(subway) == 2  # TF-IDF cosine, same effect


def test_tuning_picks_weights_that_help_on_validation():
    profiles = AuthorProfiles.from_posts([post("u1", ["nyc"]), post("u2", ["cats"])])
    valid = [post("u1", ["nyc"]), post("u2", ["cats"]), post("u3", ["news"])]
    grid = {"count": (0.0, 0.5, 4.0), "similarity": (0.0,), "lexical": (0.0,),
            "popularity": (0.0,)}
    best, results = tune_weights(FixedScorer(), profiles, valid, grid)
    assert results[PersonalizeWeights()].p_at_1 < results[best].p_at_1 == 1.0
    assert best == PersonalizeWeights(count=4.0)


def test_history_counts_cover_only_the_newest_max_history_posts():
    from tagspace.personalize import MAX_HISTORY_POSTS

    history = AuthorHistory.of_posts([(("old",), ("a",))] * 5 +
                                     [(("new",), ("b",))] * MAX_HISTORY_POSTS)
    assert len(history.post_tags) == MAX_HISTORY_POSTS
    assert history.counts == Counter({"new": MAX_HISTORY_POSTS})  # 'old' left with its posts
    history.add(("old",), ("a",))
    assert history.counts == Counter({"new": MAX_HISTORY_POSTS - 1, "old": 1})


def test_rows_that_hold_no_tag_take_no_part_in_the_z_scores():
    features = history_features(TAGS, [None])
    full = combine(np.array([[3.0, 1.0, 2.0]]), features, PersonalizeWeights(), np.zeros(3))
    padded_tags = Vocabulary(["news", "cats", "nyc", "<free:3>"], [10, 5, 1, 0])
    masked = combine(np.array([[3.0, 1.0, 2.0, -np.inf]]), history_features(padded_tags, [None]),
                     PersonalizeWeights(), np.zeros(4))
    np.testing.assert_allclose(masked[0, :3], full[0], rtol=1e-6)
    assert masked[0, 3] == -np.inf


def test_the_idf_stored_beside_a_model_round_trips_exactly(tmp_path):
    from tagspace.bow import BagOfWords
    from tagspace.personalize import load_personalization, save_personalization

    bow = BagOfWords([("kitten", "photo"), ("subway", "delay", "delay"), ("tab\there",)])
    save_personalization(tmp_path, bow)
    weights, loaded = load_personalization(tmp_path, {"personalize": {"count": 2.0}},
                                           PersonalizeWeights())
    assert weights == PersonalizeWeights(count=2.0)
    docs = [("kitten", "delay", "unknown"), ("tab\there", "photo")]
    assert (bow.transform(docs) != loaded.transform(docs)).nnz == 0
    assert load_personalization(tmp_path / "none", {}, PersonalizeWeights(lexical=1.0)) == \
        (PersonalizeWeights(lexical=1.0), None)


def test_compact_columns_rank_as_the_full_matrix_with_free_rows():
    """The daemon's compact path (tags in use only) against the offline full matrix whose
    free rows are -inf: same features, same popularity, same z-scores, same ranking."""
    from tagspace.personalize import Personalizer, tag_popularity
    from tagspace.tagger import ActiveScores, ActiveTags

    tags = Vocabulary(["news", "<free:1>", "cats", "nyc", "<free:4>"], [10, 0, 5, 1, 0])
    rows = np.array([0, 2, 3])
    profiles = AuthorProfiles.from_posts([post("u", ["nyc"], "kitten photo"),
                                          post("u", ["cats", "nyc"], "subway again")])
    history = profiles.get("u")
    features = history_features(tags, [history, None])
    picked = features.select(rows)
    assert picked.shape == (2, 3)
    np.testing.assert_array_equal(picked.count.dense(picked.shape),
                                  features.count.dense(features.shape)[:, rows])
    np.testing.assert_array_equal(tag_popularity(tags, rows), tag_popularity(tags)[rows])

    class Content(FixedScorer):
        def scores(self, posts):
            return np.tile(np.array([1.0, -np.inf, 0.5, -1.0, -np.inf], np.float32),
                           (len(posts), 1))

    content = Content()
    content.tags = tags
    weights = PersonalizeWeights(count=1.0, similarity=2.0, lexical=3.0, popularity=0.5)
    personalizer = Personalizer(weights, PersonalizedScorer(content, profiles, weights).
                                personalizer.bow)
    posts = [post("u", text="my kitten"), post("x", text="subway")]
    tokens = [p.tokens for p in posts]
    histories = [history, None]
    full = personalizer.scores(content, content.scores(posts), tokens, histories, ["u", "x"])
    compact = ActiveScores(ActiveTags(rows, None), content.scores(posts)[:, rows],
                           content.embed_tokens(tokens))
    served = personalizer.scores_active(content, compact, tokens, histories, ["u", "x"])
    np.testing.assert_allclose(served, full[:, rows], rtol=1e-6)
    for a, b in zip(served, full[:, rows], strict=True):
        assert np.argsort(-a, kind="stable").tolist() == np.argsort(-b, kind="stable").tolist()
    assert np.isinf(full[:, [1, 4]]).all()


def test_the_request_paths_tfidf_and_lexical_cosines_are_the_same_bits_as_scikit_learns():
    """The request path's TF-IDF of one post and of an author's past posts (no scikit-learn
    call) and the cosines between them equal ``BagOfWords.transform`` and the sparse product
    exactly, on real posts."""
    from pathlib import Path

    from tagspace.bow import BagOfWords
    from tagspace.dataset import read_posts
    from tagspace.personalize import _lexical_sims, tfidf_row, tfidf_rows

    cooking = Path(__file__).resolve().parents[1] / "data/cooking/cooking.train"
    docs = [p.tokens for p in read_posts(cooking)][:3000]
    bow = BagOfWords(docs[:2000])
    docs += [(), ("never-seen",), ("salt", "salt", "salt", "pepper"), ("salt",)]
    batch = bow.transform(docs)
    for i, tokens in enumerate(docs):
        ids, weights = tfidf_row(bow, tokens)
        assert ids.tolist() == batch[i].indices.tolist()
        assert weights.tolist() == batch[i].data.tolist()  # == on floats: the same bits
    rows = tfidf_rows(bow, docs)
    assert rows.shape == batch.shape
    for name in ("indptr", "indices", "data"):
        assert getattr(rows, name).tolist() == getattr(batch, name).tolist()
    assert tfidf_rows(bow, []).shape == (0, batch.shape[1])
    past = tfidf_rows(bow, docs[:200])
    for tokens in docs[2000:2100] + docs[-4:]:
        expected = (past @ bow.transform([tokens])[0].T).toarray()[:, 0]
        assert _lexical_sims(bow, tokens, past).tolist() == expected.tolist()


def test_cached_model_vectors_of_a_past_are_computed_again_past_their_max_age(monkeypatch):
    import tagspace.personalize as personalize_module
    from tagspace.personalize import AuthorHistory, Personalizer, PersonalizeWeights

    calls = []

    def embed(token_lists):  # type: ignore[no-untyped-def]
        calls.append(len(token_lists))
        return np.ones((len(token_lists), 4), np.float32)

    clock = [100.0]
    monkeypatch.setattr(personalize_module.time, "monotonic", lambda: clock[0])
    history = AuthorHistory.of_posts([(("pasta",), ("boil", "pasta"))])
    aging = Personalizer(PersonalizeWeights(), None, max_age_s=60.0)
    keeping = Personalizer(PersonalizeWeights(), None)
    for p in (aging, keeping):
        p._past("model", "u", history, embed)
        clock[0] += 59.0
        p._past("model", "u", history, embed)  # still fresh: cached
        clock[0] += 2.0
        p._past("model", "u", history, embed)  # 61 s old: again, only where it ages
        clock[0] = 100.0
    assert calls == [1, 1, 1]  # aging: twice; keeping: once
