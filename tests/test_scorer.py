"""The daemon's Scorer without servers: personalized suggestions rank exactly as the library's
``evaluate --personalize`` does for the same history, and feeds keep their promises."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from daemon.scorer import Scorer
from tagspace.bow import BagOfWords
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.online import Capacity, restore_online
from tagspace.personalize import (
    AuthorProfiles,
    PersonalizedScorer,
    Personalizer,
    PersonalizeWeights,
)
from tagspace.tagger import Tagger
from tagspace.text import parse_post_text
from tagspace.vocab import Vocabulary

WORDS = ["pasta", "sauce", "garlic", "goal", "match", "team", "rain", "cloud", "sun", "bake"]
TAGS = ["food", "sport", "weather", "italy", "football", "baking"]
TRAIN = TrainConfig(lr=0.05, batch_size=4, negatives=4, positives="all")


def trained_like_tagger(seed: int = 0) -> Tagger:
    """A small model with random weights and word-tag sharing: scores are arbitrary but fixed."""
    from tagspace.checkpoint import WORD_SPECIALS

    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    words = Vocabulary(WORDS, list(range(len(WORDS), 0, -1)), WORD_SPECIALS)
    tags = Vocabulary(TAGS, [9, 7, 5, 3, 2, 1])
    config = ModelConfig(encoder="conv", dim=8, hidden=16, kernel=3, dropout=0.0,
                         n_words=len(words), n_tags=len(tags), word_tag_share=True)
    model = TagSpaceModel(config)
    model.link_words_to_tags(words.tokens, {t: i for i, t in enumerate(tags.tokens)})
    return Tagger(model, words, tags)


class FakeStore:
    """The author histories the daemon would read from Redis, oldest first."""

    def __init__(self, authored: dict[str, list[tuple[str, list[str], list[str]]]]):
        self._authored = authored
        self.reads = 0

    def authored(self, user_id: str) -> list[tuple[str, list[str], list[str]]]:
        self.reads += 1
        return self._authored.get(user_id, [])


HISTORY = [
    ("h1", ["food", "italy"], "pasta sauce garlic"),
    ("h2", ["food"], "garlic bake"),
    ("h3", ["sport", "football"], "goal match"),
    ("h4", ["weather"], "rain cloud"),
    ("h5", ["italy"], "pasta sun"),
]
QUERIES = ["pasta with garlic", "the match and the goal", "rain again", "sun bake team"]


def scorers(weights: PersonalizeWeights):
    tagger = trained_like_tagger()
    history_posts = [Post(pid, "u", float(i), parse_post_text(text).tokens, tuple(tags))
                     for i, (pid, tags, text) in enumerate(HISTORY)]
    bow = BagOfWords([p.tokens for p in history_posts])
    offline = PersonalizedScorer(tagger, AuthorProfiles.from_posts(history_posts), weights, bow)
    # the daemon's model: the same weights inside tables grown to capacity (free rows)
    online = restore_online(tagger, Capacity(words=40, tags=20, min_word_count=1,
                                             min_tag_count=1), TRAIN)
    hub = SimpleNamespace(online=online, version=3, personalizer=Personalizer(weights, bow))
    store = FakeStore({"u": [(p.post_id, list(p.tags), list(p.tokens)) for p in history_posts]})
    return offline, Scorer(hub, store), store


@pytest.mark.parametrize("weights", [
    PersonalizeWeights(count=6.0, similarity=2.0, lexical=8.0, popularity=0.5),
    PersonalizeWeights(count=2.0),
    PersonalizeWeights(similarity=4.0, lexical=4.0),
])
def test_served_suggestions_rank_exactly_as_evaluate_personalize(weights):
    offline, scorer, _ = scorers(weights)
    for text in QUERIES:
        tokens = parse_post_text(text).tokens
        row = offline.scores([Post("q", "u", None, tokens, ())])[0]
        expected = [TAGS[i] for i in np.argsort(-row, kind="stable")]
        served = scorer.suggest(text, k=len(TAGS), user_id="u")
        assert [t for t, _ in served] == expected
        np.testing.assert_allclose([s for _, s in served], np.sort(row)[::-1], rtol=1e-5,
                                   atol=1e-5)


def test_the_history_changes_the_ranking_and_a_new_author_gets_the_content_ranking():
    offline, scorer, _ = scorers(PersonalizeWeights(count=8.0))
    content = scorer.hub.online.tagger.scores(
        [Post("", None, None, parse_post_text("rain again").tokens, ())])[0][:len(TAGS)]
    by_content = [TAGS[i] for i in np.argsort(-content, kind="stable")]
    assert [t for t, _ in scorer.suggest("rain again", len(TAGS), "stranger")] == by_content
    assert [t for t, _ in scorer.suggest("rain again", len(TAGS), None)] == by_content
    personal = [t for t, _ in scorer.suggest("rain again", len(TAGS), "u")]
    # used twice each by this author: 8 x log 3 outweighs any z-scored content difference
    assert set(personal[:2]) == {"food", "italy"}
    assert personal != by_content


def test_free_rows_are_never_suggested_and_k_is_honoured():
    _, scorer, _ = scorers(PersonalizeWeights(count=2.0))
    served = scorer.suggest("pasta", k=50, user_id="u")
    assert sorted(t for t, _ in served) == sorted(TAGS)  # 6 tags in use, 20 rows
    assert len(scorer.suggest("pasta", k=2, user_id="u")) == 2


def test_one_redis_read_per_personalized_request():
    _, scorer, store = scorers(PersonalizeWeights(count=2.0, similarity=2.0, lexical=2.0))
    scorer.suggest("pasta", k=3, user_id="u")
    scorer.suggest("pasta", k=3, user_id="u")
    assert store.reads == 2


def test_a_new_post_by_the_author_is_used_at_once_and_the_cache_stays_bounded():
    weights = PersonalizeWeights(count=1.0, similarity=4.0, lexical=4.0)
    offline, scorer, store = scorers(weights)
    scorer.hub.personalizer = Personalizer(weights, offline.personalizer.bow, cache_size=2)
    before = scorer.suggest("rain again", k=3, user_id="u")
    tokens = parse_post_text("rain rain cloud again").tokens
    store._authored["u"].append(("h6", ["italy"], list(tokens)))
    profiles = AuthorProfiles.from_posts(
        Post(pid, "u", float(i), tuple(words), tuple(tags))
        for i, (pid, tags, words) in enumerate(store._authored["u"]))
    library = PersonalizedScorer(offline.content, profiles, weights, offline.personalizer.bow)
    row = library.scores([Post("q", "u", None, parse_post_text("rain again").tokens, ())])[0]
    after = scorer.suggest("rain again", k=3, user_id="u")
    assert [t for t, _ in after] == [TAGS[i] for i in np.argsort(-row, kind="stable")[:3]]
    assert after != before  # 'italy' now has a past post just like the query
    for user in ("a", "b", "c"):
        store._authored[user] = store._authored["u"]
        scorer.suggest("rain", k=3, user_id=user)
    assert len(scorer.hub.personalizer._past_vectors) <= 2
