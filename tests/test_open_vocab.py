"""Open-vocabulary candidates, their learned scorer, and metrics where a never-seen gold tag is a
possible hit (tagspace.open_vocab)."""

from __future__ import annotations

import numpy as np
import pytest

from tagspace.metrics import gold_ranks, ranking_metrics
from tagspace.open_vocab import (
    FEATURES,
    CopyStats,
    OpenVocabConfig,
    OpenVocabScorer,
    candidates,
    known_top,
    open_metrics,
    post_strings,
)
from tagspace.personalize import AuthorHistory


def test_words_and_runs_of_words_are_candidates_placeholders_and_punctuation_are_not():
    strings = post_strings(("things", "i", "love", ",", "<url>", "ok", "go"), max_concat=3)
    assert strings == {"things": 1, "thingsi": 2, "thingsilove": 3, "ilove": 2, "love": 1,
                       "ok": 1, "okgo": 2, "go": 1}  # "i" alone is too short; "," ends a run


def test_copy_rates_follow_the_training_posts():
    posts = [(("rupee", "gain", "today"), ("rupee",))] * 5 + [(("today", "rupee"), ())]
    stats = CopyStats.from_posts(posts, max_concat=2)
    assert stats.copy_logodds("rupee") > 0 > stats.copy_logodds("today")
    assert stats.tag_count["rupee"] == 5 and stats.appear["rupee"] == 6
    assert stats.copy_logodds("never-seen") == pytest.approx(
        np.log(stats.prior / (1 - stats.prior)))


def test_candidates_keep_the_known_ranking_and_add_the_posts_strings():
    stats = CopyStats.from_posts([], max_concat=3)
    known = [("food", 2.0), ("pizza", 1.5), ("dinner", 0.5)]
    only = candidates(("i", "love", "pizza"), known, stats, OpenVocabConfig(sources=("known",)))
    assert only.tags == ["food", "pizza", "dinner"]
    found = candidates(("i", "love", "pizza"), known, stats, OpenVocabConfig(),
                       AuthorHistory.of_posts([(("yum",), ())]))
    assert found.tags[:3] == ["food", "pizza", "dinner"]
    assert {"love", "ilove", "ilovepizza", "lovepizza", "yum"} <= set(found.tags)
    f = dict(zip(found.tags, found.features, strict=True))
    col = {name: i for i, name in enumerate(FEATURES)}
    assert f["pizza"][col["known"]] == 1 and f["pizza"][col["word"]] == 1
    assert f["ilovepizza"][col["known"]] == 0 and f["ilovepizza"][col["concat"]] == 3
    assert f["yum"][col["author_log_count"]] > 0 and f["food"][col["author_log_count"]] == 0
    assert f["food"][col["content_gap"]] == 0 and f["dinner"][col["content_gap"]] == 1.5


def test_a_never_seen_run_of_words_is_suggested_once_learned_from_others():
    """Training posts whose hashtag is their phrase run together (#ilovepizza): a new post's
    phrase, a tag never seen anywhere, comes first."""
    foods = [f"food{i}" for i in range(60)]
    # copy statistics from other posts than the scorer's examples, as scripts/open_vocab.py does
    stats = CopyStats.from_posts([(("i", "love", f), ("ilove" + f,)) for f in foods[:20]], 3)
    config = OpenVocabConfig(known_k=3)
    # the content model's best known tags: unsure for the first kind, sure of #food for the other
    unsure = [("yummy", 1.0), ("food", 0.9), ("dinner", 0.8)]
    sure = [("food", 3.0), ("yummy", 1.0), ("dinner", 0.8)]
    examples = [(candidates(("i", "love", f), unsure, stats, config), ("ilove" + f,))
                for f in foods[20:50]]
    examples += [(candidates(("what", "a", f, "day"), sure, stats, config), ("food",))
                 for f in foods[20:50]]
    scorer = OpenVocabScorer.fit(examples, config, stats)
    new = candidates(("i", "love", "food55"), unsure, stats, config)
    assert scorer.rank(new, k=1)[0][0] == "ilovefood55"
    plain = candidates(("what", "a", "food56", "day"), sure, stats, config)
    assert scorer.rank(plain, k=1)[0][0] == "food"


def test_open_metrics_are_the_contracts_on_a_known_only_ranking():
    rng = np.random.default_rng(1)
    tags = [f"t{i}" for i in range(30)]
    scores = rng.normal(size=(50, 30))
    gold = [tuple(rng.choice(tags + ["new1", "new2"], size=int(rng.integers(1, 4)),
                             replace=False)) for _ in range(50)]
    ranked = [[t for t, _ in top] for top in known_top(scores, tags, 10)]
    mine = open_metrics(ranked, gold, frozenset(tags))
    ids = [np.array([tags.index(t) for t in g if t in tags], np.int64) for g in gold]
    theirs = ranking_metrics(gold_ranks(scores, ids), [len(g) - len(i) for g, i in
                                                       zip(gold, ids, strict=True)], 30)
    assert mine.p_at_1 == pytest.approx(theirs.p_at_1)
    assert mine.r_at_10 == pytest.approx(theirs.r_at_10)
    assert mine.p_at_1_known == pytest.approx(theirs.p_at_1_known)
    assert mine.r_at_10_known == pytest.approx(theirs.r_at_10_known)
    # a never-seen gold tag is a possible hit
    assert open_metrics([["new1"]], [("new1",)], frozenset(tags)).p_at_1 == 1.0


def test_sources_must_include_the_known_tags():
    with pytest.raises(ValueError, match="known"):
        OpenVocabConfig(sources=("word",))
    with pytest.raises(ValueError, match="sources"):
        OpenVocabConfig(sources=("known", "emoji"))


def test_an_empty_post_has_the_known_tags_only_and_nothing_ranks_nothing():
    stats = CopyStats.from_posts([], max_concat=3)
    found = candidates((), [("food", 1.0)], stats, OpenVocabConfig())
    assert found.tags == ["food"]
    none = candidates(("<url>", "!"), [], stats, OpenVocabConfig())
    assert none.tags == [] and none.features.shape == (0, len(FEATURES))


def test_a_scorer_needs_hits_and_misses_to_learn_from():
    stats = CopyStats.from_posts([], max_concat=3)
    found = candidates(("pizza",), [("food", 1.0)], stats, OpenVocabConfig())
    with pytest.raises(ValueError, match="hits and misses"):
        OpenVocabScorer.fit([(found, ("nothing",))], OpenVocabConfig(), stats)
