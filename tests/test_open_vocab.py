"""Open-vocabulary candidates, their learned scorer, and metrics where a never-seen gold tag is a
possible hit (tagspace.open_vocab)."""

from __future__ import annotations

import numpy as np
import pytest

from tagspace.metrics import gold_ranks, ranking_metrics
from tagspace.open_vocab import (
    FEATURES,
    CopyStats,
    ListedColumns,
    OpenVocabConfig,
    OpenVocabScorer,
    candidates,
    candidates_for_row,
    known_top,
    load_scorers,
    open_metrics,
    post_strings,
    save_scorers,
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


# the content model's best known tags: unsure for posts of one kind, sure of #food for the other
UNSURE = [("yummy", 1.0), ("food", 0.9), ("dinner", 0.8)]
SURE = [("food", 3.0), ("yummy", 1.0), ("dinner", 0.8)]


def ilove_scorer() -> tuple[OpenVocabScorer, CopyStats, OpenVocabConfig]:
    """Learned from posts whose hashtag is their phrase run together (#ilove<food>) and posts
    of #food; copy statistics from other posts than its examples, as scripts/open_vocab.py."""
    foods = [f"food{i}" for i in range(60)]
    stats = CopyStats.from_posts([(("i", "love", f), ("ilove" + f,)) for f in foods[:20]], 3)
    config = OpenVocabConfig(known_k=3)
    examples = [(candidates(("i", "love", f), UNSURE, stats, config), ("ilove" + f,))
                for f in foods[20:50]]
    examples += [(candidates(("what", "a", f, "day"), SURE, stats, config), ("food",))
                 for f in foods[20:50]]
    return OpenVocabScorer.fit(examples, config, stats), stats, config


def test_a_never_seen_run_of_words_is_suggested_once_learned_from_others():
    """Training posts whose hashtag is their phrase run together (#ilovepizza): a new post's
    phrase, a tag never seen anywhere, comes first."""
    scorer, stats, config = ilove_scorer()
    new = candidates(("i", "love", "food55"), UNSURE, stats, config)
    assert scorer.rank(new, k=1)[0][0] == "ilovefood55"
    plain = candidates(("what", "a", "food56", "day"), SURE, stats, config)
    assert scorer.rank(plain, k=1)[0][0] == "food"


def test_candidates_of_a_score_row_are_those_of_its_best_known_tags_and_their_ranks():
    """What the daemon calls on its compact score rows is what the evaluation built by hand:
    the best known_k by score (ties by column), and any other known tag's score and rank."""
    rng = np.random.default_rng(3)
    tags = [f"t{i}" for i in range(40)] + ["pizza", "love"]
    row = np.round(rng.normal(size=len(tags)), 1).astype(np.float32)  # rounded: ties
    row[5] = -np.inf  # a row that holds no tag
    _, stats, config = ilove_scorer()
    tokens = ("i", "love", "pizza", "t5")
    (top,) = known_top(row[None], tags, config.known_k)

    def score_of(tag: str) -> tuple[float, int] | None:
        i = tags.index(tag) if tag in tags else None
        return None if i is None else (float(row[i]), int((row > row[i]).sum()))

    by_hand = candidates(tokens, top, stats, config, None, frozenset(tags), score_of)
    mine = candidates_for_row(tokens, row, ListedColumns.of(tags), stats, config)
    assert mine.tags == by_hand.tags and "t5" in mine.tags and "t5" not in mine.tags[:3]
    np.testing.assert_array_equal(mine.features, by_hand.features)


def test_scorers_rank_many_posts_as_each_alone_and_survive_their_folder(tmp_path):
    scorer, stats, config = ilove_scorer()
    posts = [(("i", "love", "food55"), UNSURE), (("what", "a", "food56", "day"), SURE),
             (("<url>",), []), (("i", "love", "food57"), UNSURE)]
    found = [candidates(p, known, stats, config) for p, known in posts]
    together = scorer.rank_many(found, [3, 1, 5, 2])
    assert together == [scorer.rank(c, k) for c, k in zip(found, [3, 1, 5, 2], strict=True)]
    assert together[0][0][0] == "ilovefood55" and together[1][0][0] == "food"
    assert together[2] == [] and len(together[0]) == 3
    save_scorers(tmp_path / "ov", {"content": scorer, "personalized": scorer})
    loaded = load_scorers(tmp_path / "ov")
    assert loaded["content"].rank_many(found, [3, 1, 5, 2]) == together
    assert loaded["personalized"].config == config
    assert loaded["content"].stats.appear == stats.appear
    assert loaded["content"].stats.prior == stats.prior
    index = tmp_path / "ov" / "scorers.json"
    index.write_text(index.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(ValueError, match="format 99"):
        load_scorers(tmp_path / "ov")
    with pytest.raises(ValueError, match="not a folder of open-vocabulary scorers"):
        load_scorers(tmp_path / "nowhere")
    other = OpenVocabScorer(config, CopyStats.from_posts([], 3), scorer.model)
    with pytest.raises(ValueError, match="share"):
        save_scorers(tmp_path / "two", {"content": scorer, "personalized": other})


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
