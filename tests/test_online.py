"""Online vocabularies and the online model: admission, eviction, checkpoints, new tags."""

import numpy as np

from tagspace.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.online import Capacity, OnlineTagSpace, restore_online
from tagspace.online_vocab import OnlineVocabulary
from tagspace.text import tokenize
from tagspace.vocab import Vocabulary


def test_tokens_enter_after_min_count_and_lru_is_evicted_when_full():
    v = OnlineVocabulary(Vocabulary(["a"], [5], ["<pad>"]), capacity=3, min_count=2)
    assert v.observe(["b"], clock=1) == [] and "b" not in v  # pending: seen once
    [admission] = v.observe(["b"], clock=2)
    assert (admission.row, admission.token, admission.evicted) == (2, "b", None)
    v.observe(["b"], clock=3)  # 'a' (last seen at 0) is now the least recently seen
    v.observe(["c"], clock=4)
    [admission] = v.observe(["c"], clock=5)
    assert (admission.row, admission.evicted) == (1, "a")
    assert "a" not in v and v.index("c") == 1 and v.evictions == 1
    assert v.index("<pad>") == 0  # specials are never evicted
    assert v.size == 3 and v.active.all()


def test_free_rows_are_unknown_and_never_suggested():
    v = OnlineVocabulary(Vocabulary(["a"], [1]), capacity=4)
    assert len(v) == 4 and v.size == 1
    assert v.encode(["a", v.tokens[2]]) == [0]  # a placeholder is not a token
    assert v.observe([v.tokens[3]], clock=1) == []  # and cannot be admitted


def test_restore_keeps_rows_and_free_slots():
    v = OnlineVocabulary(Vocabulary(["a", "b"], [1, 1]), capacity=6, min_count=1)
    v.observe(["c"], clock=1)
    saved = Vocabulary(list(v.tokens), list(v.counts))
    again = OnlineVocabulary.restore(saved, capacity=8, min_count=1)
    assert len(again) == 8 and [again.index(t) for t in "abc"] == [0, 1, 2]
    assert again.observe(["d"], clock=2)[0].row == 3  # the lowest free row


def small_model(**capacity):
    config = ModelConfig(encoder="conv", dim=16, hidden=32, kernel=3, dropout=0.0)
    train = TrainConfig(lr=0.05, batch_size=8, negatives=50, positives="all")
    return OnlineTagSpace.fresh(config, Capacity(**capacity), train)


def post(i, text, tags):
    return Post(f"p{i}", "u", float(i), tokenize(text), tuple(tags))


def topics(n, seed=0):
    rng = np.random.default_rng(seed)
    vocab = {"food": "pasta sauce garlic oven bake", "sport": "goal match team league score",
             "tech": "python code server bug deploy"}
    out = []
    for i in range(n):
        topic = list(vocab)[i % 3]
        words = rng.choice(vocab[topic].split(), 4).tolist() + ["the", "a"]
        out.append(post(i, " ".join(words), [topic]))
    return out


def test_a_new_tag_becomes_suggestible_and_a_checkpoint_round_trips(tmp_path):
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=2)
    stream = topics(300)
    for i in range(0, len(stream), 8):
        batch = stream[i:i + 8]
        for p in batch:
            online.observe(p, clock=float(i))
        online.train(batch)
    # a hashtag that did not exist: 'rust', on posts about a new topic
    new = [post(1000 + i, "rust borrow checker crate cargo", ["rust"]) for i in range(20)]
    before = online.evaluate(new[:1])[0]
    assert before.found_at_10 == 0  # unknown: a miss
    more = topics(60, seed=1)
    for i in range(0, 20, 2):  # the new topic arrives among the usual ones
        batch = new[i:i + 2] + more[3 * i:3 * i + 6]
        for p in batch:
            online.observe(p, clock=400.0 + i)
        online.train(batch)
    top = [s.tag for s in online.tagger.suggest("cargo crate borrow", k=3)]
    assert top[0] == "rust"
    assert set(top) <= {"rust", "food", "sport", "tech"}  # free rows never appear
    hits = online.evaluate(stream[:30])
    assert np.mean([h.hit_at_1 for h in hits]) > 0.9  # the old topics are still known

    save_checkpoint(tmp_path / "m", Checkpoint(online.snapshot()))
    back = restore_online(load_checkpoint(tmp_path / "m", keep_free_rows=True).tagger,
                          Capacity(words=64, tags=16), online.train_config)
    assert back.tags.index("rust") == online.tags.index("rust")
    assert back.tags.size == online.tags.size == 4
    assert [s.tag for s in back.tagger.suggest("cargo crate borrow", k=1)] == ["rust"]


def test_a_trained_model_grows_to_capacity():
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    for p in topics(30):
        online.observe(p, clock=0.0)
    grown = restore_online(online.snapshot(), Capacity(words=128, tags=32), online.train_config)
    assert grown.model.word_emb.shape[0] == 128 and grown.model.tag_emb.shape[0] == 32
    assert grown.tags.size == 3 and len(grown.tags) == 32


def test_top_k_selection_matches_a_stable_sort_ties_by_id():
    from tagspace.tagger import top_k

    rng = np.random.default_rng(0)
    for n in (10, 100, 1000):
        vocab = Vocabulary([str(i) for i in range(n)], [1] * n)
        for _ in range(20):
            row = rng.integers(0, 5, n).astype(float)  # many ties
            expected = [vocab.tokens[i] for i in np.argsort(-row, kind="stable")[:7]]
            assert [s.tag for s in top_k(row, vocab, 7)] == expected


def daemon_checkpoint(tmp_path):
    """A checkpoint as the daemon writes it: 3 tags in use among 16 rows, free rows saved as
    placeholders."""
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    stream = topics(60)
    for i in range(0, len(stream), 6):
        for p in stream[i:i + 6]:
            online.observe(p, clock=float(i))
        online.train(stream[i:i + 6])
    save_checkpoint(tmp_path / "m", Checkpoint(online.snapshot()))
    return online, tmp_path / "m"


def test_a_loaded_daemon_checkpoint_ranks_and_counts_only_the_tags_in_use(tmp_path):
    from tagspace.evaluate import evaluate

    online, path = daemon_checkpoint(tmp_path)
    assert any(t.startswith("<free:") for t in (path / "tags.tsv").read_text().split())
    tagger = load_checkpoint(path).tagger
    assert sorted(tagger.tags.tokens) == ["food", "sport", "tech"]
    assert [s.tag for s in tagger.suggest("pasta garlic", k=10)][0] == "food"
    assert len(tagger.suggest("pasta garlic", k=10)) == 3  # never a free row
    np.testing.assert_allclose(  # the same scores for the tags in use
        tagger.scores(topics(3))[:, [tagger.tags.index(t) for t in ("food", "sport", "tech")]],
        online.tagger.scores(topics(3))[:, [online.tags.index(t) for t in ("food", "sport",
                                                                             "tech")]],
        rtol=1e-5)
    # an unknown gold tag ranks N + 1, N the tags in use (not the 16 rows)
    unknown = [post(0, "pasta sauce", ["never_seen"])]
    assert evaluate(tagger, unknown, progress=False).metrics.mean_rank == 4
    # the daemon's own restore keeps every row in place
    kept = load_checkpoint(path, keep_free_rows=True).tagger
    assert len(kept.tags) == 16 and kept.tags.tokens == online.tags.tokens


def test_a_snapshot_never_suggests_its_free_rows():
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    for p in topics(6):
        online.observe(p, clock=0.0)
    snapshot = online.snapshot()  # plain vocabularies, placeholders included
    assert {s.tag for s in snapshot.suggest("pasta garlic", k=10)} == {"food", "sport", "tech"}


def test_the_daemon_trains_a_tagspace_train_model_without_dropout(tmp_path):
    import torch

    from daemon.model_hub import ModelHub
    from tagspace.checkpoint import WORD_SPECIALS
    from tagspace.model import TagSpaceModel
    from tagspace.tagger import Tagger

    config = ModelConfig(encoder="conv", dim=16, hidden=32, kernel=3, dropout=0.5,
                         n_words=6, n_tags=2)
    words = Vocabulary(["pasta", "goal", "the", "a"], [5, 5, 9, 9], WORD_SPECIALS)
    trained = Tagger(TagSpaceModel(config), words, Vocabulary(["food", "sport"], [5, 5]))
    save_checkpoint(tmp_path / "trained", Checkpoint(trained))
    train = TrainConfig(lr=0.05, batch_size=8, negatives=50, positives="all")
    hub = ModelHub(tmp_path / "trained", Capacity(words=64, tags=16), train, config)
    online = hub.online
    assert hub.source == "trained" and online.model.config.dropout == 0.0
    worker = online.steps._worker()  # the encoder a Hogwild step trains, in training mode
    assert worker.encoder.training
    ids, mask = online.tagger._batch([["pasta", "the", "a"]] * 4)
    with torch.no_grad():
        x = online.model.word_emb[ids]
        first, second = worker.encoder(x, mask), worker.encoder(x, mask)
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout mask
    embs = [online.tagger.embed_tokens([["pasta", "the"]]) for _ in range(2)]
    torch.testing.assert_close(embs[0], embs[1], rtol=0, atol=0)
    # the weights are the trained ones
    torch.testing.assert_close(online.model.word_emb[:6], trained.model.word_emb)
    # and a checkpoint of it says dropout 0
    hub.checkpoint()
    assert load_checkpoint(hub.checkpoints / "v00000002").tagger.model.config.dropout == 0.0


def test_embed_and_evaluate_is_one_pass_equal_to_embedding_and_evaluating_apart():
    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    stream = topics(30)
    for p in stream:
        online.observe(p, clock=float(p.ts))
    posts = stream[:12] + [post(99, "pasta goal python", [])]  # an untagged one too
    embs, predictions = online.embed_and_evaluate(posts, evaluate=5)
    np.testing.assert_allclose(embs, online.tagger.embed_all([p.tokens for p in posts]),
                               rtol=1e-5, atol=1e-6)
    assert predictions == online.evaluate(posts[:5])  # the first 5 tagged posts
    assert online.embed_and_evaluate(posts, evaluate=0)[1] == []
