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

    def authored_many(self, user_ids: list[str | None]
                      ) -> list[list[tuple[str, list[str], list[str]]]]:
        return [self.authored(u) if u is not None else [] for u in user_ids]


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
    hub = SimpleNamespace(online=online, tagger=online.tagger, version=3, weights_id=0,
                          personalizer=Personalizer(weights, bow))
    store = FakeStore({"u": [(p.post_id, list(p.tags), list(p.tokens)) for p in history_posts]})
    return offline, Scorer(hub, store), store


def test_suggestions_answered_together_are_each_the_one_answered_alone():
    """A batch mixing an author with a past, one without, and no author: each answer is the
    request's own (tags in the same order, the same scores), and the authors are read once."""
    _, scorer, store = scorers(PersonalizeWeights(count=6.0, similarity=2.0, lexical=8.0))
    requests = [(text, k, user) for text in QUERIES for k, user in
                ((3, "u"), (len(TAGS), None), (5, "stranger"))]
    alone = [scorer.suggest(*r) for r in requests]
    reads = store.reads
    together = scorer.suggest_many(requests)
    assert store.reads - reads == sum(user is not None for _, _, user in requests)
    assert [[t for t, *_ in a] for a in together] == [[t for t, *_ in a] for a in alone]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose([s for _, s, _ in a], [s for _, s, _ in b], rtol=1e-5,
                                   atol=1e-6)
    assert together[0] != together[1]  # the author's past changed the first one's ranking


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
        assert [t for t, *_ in served] == expected
        np.testing.assert_allclose([s for _, s, _ in served], np.sort(row)[::-1], rtol=1e-5,
                                   atol=1e-5)


def test_the_history_changes_the_ranking_and_a_new_author_gets_the_content_ranking():
    offline, scorer, _ = scorers(PersonalizeWeights(count=8.0))
    content = scorer.hub.tagger.scores(
        [Post("", None, None, parse_post_text("rain again").tokens, ())])[0][:len(TAGS)]
    by_content = [TAGS[i] for i in np.argsort(-content, kind="stable")]
    assert [t for t, *_ in scorer.suggest("rain again", len(TAGS), "stranger")] == by_content
    assert [t for t, *_ in scorer.suggest("rain again", len(TAGS), None)] == by_content
    personal = [t for t, *_ in scorer.suggest("rain again", len(TAGS), "u")]
    # used twice each by this author: 8 x log 3 outweighs any z-scored content difference
    assert set(personal[:2]) == {"food", "italy"}
    assert personal != by_content


def test_free_rows_are_never_suggested_and_k_is_honoured():
    _, scorer, _ = scorers(PersonalizeWeights(count=2.0))
    served = scorer.suggest("pasta", k=50, user_id="u")
    assert sorted(t for t, *_ in served) == sorted(TAGS)  # 6 tags in use, 20 rows
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
    assert [t for t, *_ in after] == [TAGS[i] for i in np.argsort(-row, kind="stable")[:3]]
    assert after != before  # 'italy' now has a past post just like the query
    for user in ("a", "b", "c"):
        store._authored[user] = store._authored["u"]
        scorer.suggest("rain", k=3, user_id=user)
    assert len(scorer.hub.personalizer._past_vectors) <= 2


# --- the serving path: the tags in use only, as a compact row -------------------------------


def full_row(tagger: Tagger, text: str) -> np.ndarray:
    return tagger.scores([Post("", None, None, parse_post_text(text).tokens, ())])[0]


def assert_served_is_the_full_ranking(scorer: Scorer, text: str, user_id: str | None = None):
    """The served answer for every tag equals the offline full-table ranking of the tags in use
    (content only: the library's Tagger.scores with -inf on free rows)."""
    tagger = scorer.hub.tagger
    row = full_row(tagger, text)
    order = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])]
    served = scorer.suggest(text, k=1000, user_id=user_id)
    assert [t for t, *_ in served] == [tagger.tags.tokens[i] for i in order]
    np.testing.assert_allclose([s for _, s, _ in served], row[order], rtol=1e-6, atol=1e-6)


def test_the_served_tags_follow_admissions_and_evictions_with_no_stale_cache():
    _, scorer, _ = scorers(PersonalizeWeights())
    online = scorer.hub.online
    tagger = online.tagger
    first = tagger.active_tags()
    assert first.rows.tolist() == list(range(len(TAGS))) and first.prefix
    assert tagger.active_tags() is first  # cached while the vocabulary holds still
    assert_served_is_the_full_ranking(scorer, "pasta with garlic")
    # a new tag is admitted (min_tag_count=1): served at once, at its warm-started row
    online.observe(Post("n1", "v", 1.0, ("bake", "bread"), ("bread",)), clock=1.0)
    assert tagger.active_tags() is not first
    assert "bread" in [t for t, *_ in scorer.suggest("bake bread", k=50, user_id=None)]
    assert_served_is_the_full_ranking(scorer, "bake bread")
    # fill the table (20 rows), then one more: the least recently seen tag is evicted
    for i in range(20 - len(TAGS) - 1):
        online.observe(Post(f"f{i}", "v", 2.0, ("sun",), (f"filler{i}",)), clock=2.0 + i)
    assert online.tags.size == 20
    online.observe(Post("n2", "v", 99.0, ("rain",), ("storm",)), clock=99.0)
    served = [t for t, *_ in scorer.suggest("rain cloud", k=50, user_id=None)]
    assert "storm" in served and len(served) == 20
    evicted = (set(TAGS) | {"bread"} | {f"filler{i}" for i in range(13)}) - set(served)
    assert len(evicted) == 1 and not evicted & set(online.tags.tokens)
    assert_served_is_the_full_ranking(scorer, "rain cloud")


def online_tagger_with_rows(in_use: list[int], capacity: int = 20) -> Tagger:
    """A Tagger over an online vocabulary whose rows in use are ``in_use`` (free rows between),
    random weights and word-tag sharing (some tags are spelled as words)."""
    from tagspace.online_vocab import FREE_PREFIX, OnlineVocabulary

    torch = pytest.importorskip("torch")
    base = trained_like_tagger(seed=1)
    names = ["pasta", "goal", "rain"] + [f"t{i}" for i in range(capacity)]
    tokens = [names.pop(0) if r in in_use else f"{FREE_PREFIX}{r}>" for r in range(capacity)]
    tags = OnlineVocabulary.restore(Vocabulary(tokens, list(range(capacity, 0, -1))), capacity)
    config = ModelConfig(**(base.model.config.to_dict() | {"n_tags": capacity}))
    torch.manual_seed(2)
    model = TagSpaceModel(config)
    with torch.no_grad():
        model.copy_weight.fill_(0.7)
    model.link_words_to_tags(base.words.tokens, {t: i for i, t in enumerate(tags.tokens)
                                                 if tags.active[i]})
    return Tagger(model, base.words, tags)


@pytest.mark.parametrize("in_use", [
    list(range(7)),  # the usual case: the table's first rows (a view, no copy)
    [0, 1, 2, 4, 5, 6, 8, 9],  # mostly in use, with holes: one product over the span
    [1, 17],  # a few rows far apart: the rows are gathered
])
def test_score_active_equals_the_full_scores_on_the_rows_in_use(in_use):
    tagger = online_tagger_with_rows(in_use)
    texts = ["pasta and rain", "the goal", "nothing known here"]
    active = tagger.score_active([parse_post_text(t).tokens for t in texts])
    assert active.tags.rows.tolist() == in_use
    assert active.scores.dtype == np.float32  # fp32, as offline (bf16 moves rankings)
    full = tagger.scores([Post("", None, None, parse_post_text(t).tokens, ()) for t in texts])
    np.testing.assert_allclose(active.scores, full[:, in_use], rtol=1e-6, atol=1e-7)
    assert np.isinf(np.delete(full, in_use, axis=1)).all()
    bonus = full[0, tagger.tags.index("pasta")] - full[1, tagger.tags.index("pasta")]
    assert bonus != 0  # the word-tag bonus is in both
    np.testing.assert_array_equal(active.embeddings, tagger.embed_tokens(
        [parse_post_text(t).tokens for t in texts]).numpy())
    assert active.tags.positions(np.array([in_use[-1], 3 if 3 not in in_use else 19, -1])) \
        .tolist() == [len(in_use) - 1, -1, -1]


def test_a_plain_vocabulary_with_placeholders_serves_only_its_tags():
    from tagspace.online_vocab import FREE_PREFIX

    base = trained_like_tagger()
    tokens = list(base.tags.tokens)
    tokens[2] = f"{FREE_PREFIX}2>"  # a snapshot's free row
    tagger = Tagger(base.model, base.words, Vocabulary(tokens, [1] * len(tokens)))
    assert tagger.active_tags().rows.tolist() == [0, 1, 3, 4, 5]
    active = tagger.score_active([("pasta",)])
    np.testing.assert_allclose(active.scores[0], full_row(tagger, "pasta")[[0, 1, 3, 4, 5]],
                               rtol=1e-6)


def test_personalized_ranking_stays_exact_after_the_vocabulary_moves():
    weights = PersonalizeWeights(count=6.0, similarity=2.0, lexical=8.0, popularity=0.5)
    offline, scorer, store = scorers(weights)
    online = scorer.hub.online
    scorer.suggest("pasta", k=3, user_id="u")  # caches the rows in use
    online.observe(Post("n1", "u", 9.0, ("pasta", "bake"), ("italy", "pastry")), clock=9.0)
    store._authored["u"].append(("n1", ["italy", "pastry"], ["pasta", "bake"]))
    profiles = AuthorProfiles.from_posts(
        Post(pid, "u", float(i), tuple(words), tuple(tags))
        for i, (pid, tags, words) in enumerate(store._authored["u"]))
    library = PersonalizedScorer(online.tagger, profiles, weights, offline.personalizer.bow)
    for text in QUERIES + ["pasta bake"]:
        row = library.scores([Post("q", "u", None, parse_post_text(text).tokens, ())])[0]
        expected = [online.tags.tokens[i] for i in np.argsort(-row, kind="stable")
                    if np.isfinite(row[i])]
        served = scorer.suggest(text, k=50, user_id="u")
        assert [t for t, *_ in served] == expected
        assert "pastry" in expected  # the new tag, with its count and popularity (live counts)


def test_the_suggest_route_answers_the_scorer_as_its_openapi_schema_says():
    """Over HTTP (orjson bytes, no response validation): the same tags and scores, the shape
    that /openapi.json documents, and the latency metric labelled by route."""
    from fastapi.testclient import TestClient

    from daemon.api import create_app
    from daemon.config import Settings
    from daemon.metrics import Metrics

    _, scorer, _ = scorers(PersonalizeWeights(count=2.0, lexical=2.0))
    daemon = SimpleNamespace(settings=Settings(), metrics=Metrics(), scorer=scorer,
                             hub=scorer.hub, refresh_gauges=lambda: None)
    client = TestClient(create_app(daemon))  # type: ignore[arg-type]
    r = client.post("/v1/suggest", json={"text": "pasta with garlic", "k": 4, "user_id": "u"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"tags": [{"tag": t, "score": s, "known": known} for t, s, known in
                                 scorer.suggest("pasta with garlic", 4, "u")],
                        "model_version": 3}
    doc = client.get("/openapi.json").json()
    schema = doc["paths"]["/v1/suggest"]["post"]["responses"]["200"]["content"]
    assert schema["application/json"]["schema"]["$ref"].endswith("/SuggestResponse")
    assert set(doc["components"]["schemas"]["SuggestResponse"]["properties"]) == \
        set(r.json())
    assert set(doc["components"]["schemas"]["TagScore"]["properties"]) == \
        set(r.json()["tags"][0]) == set(doc["components"]["schemas"]["TagScore"]["required"])
    assert daemon.metrics.registry.get_sample_value(
        "tagspace_api_request_seconds_count", {"route": "/v1/suggest", "status": "200"}) == 1


def test_open_vocabulary_suggestions_are_the_librarys_and_name_never_seen_tags():
    """With open-vocabulary scorers, each served answer is what tagspace.open_vocab ranks for
    the same post and history (content rows without an author's past, the personalized rows
    and scorer with it), and a run of the post's words that no model has seen comes first."""
    from daemon.open_vocab import OpenVocabRanking
    from tagspace.open_vocab import (
        CopyStats,
        ListedColumns,
        OpenVocabConfig,
        OpenVocabScorer,
        candidates_for_row,
    )

    offline, plain, store = scorers(PersonalizeWeights(count=2.0, similarity=2.0, lexical=2.0))
    config = OpenVocabConfig(known_k=3)
    columns = ListedColumns.of(TAGS)
    pairs = [(a, b) for a in WORDS for b in WORDS if a != b]
    stats = CopyStats.from_posts([((a, b), (a + b,)) for a, b in pairs[::3]], 3)
    history = offline.profiles.get("u")

    def examples(personal: bool) -> list:
        out = []
        for n, (a, b) in enumerate(pairs):
            post = Post("x", "u" if personal else None, None, (a, b), ())
            row = (offline if personal else offline.content).scores([post])[0]
            found = candidates_for_row((a, b), row, columns, stats, config,
                                       history if personal else None)
            # the pairs whose run the copy statistics saw as a tag have it as theirs
            out.append((found, (a + b,) if n % 3 == 0 else (found.tags[0],)))
        return out

    fitted = {"content": OpenVocabScorer.fit(examples(False), config, stats),
              "personalized": OpenVocabScorer.fit(examples(True), config, stats)}
    served = Scorer(plain.hub, store, OpenVocabRanking(fitted))
    assert ("rain", "cloud") in pairs[::3]
    requests = [(q, 5, user) for q in QUERIES + ["rain cloud"] for user in ("u", None)]
    for (text, k, user), answer in zip(requests, served.suggest_many(requests), strict=True):
        tokens = parse_post_text(text).tokens
        post = Post("q", user, None, tokens, ())
        mode = "personalized" if user else "content"
        row = (offline if user else offline.content).scores([post])[0]
        found = candidates_for_row(tokens, row, columns, stats, config,
                                   history if user else None)
        expected = fitted[mode].rank(found, k)
        assert [t for t, *_ in answer] == [t for t, _ in expected]
        np.testing.assert_allclose([p for _, p, _ in answer], [p for _, p in expected],
                                   rtol=1e-6)
        assert [known for *_, known in answer] == [t in TAGS for t, _ in expected]
    first = served.suggest("rain cloud", 5, None)[0]
    assert first[0] == "raincloud" and first[2] is False
