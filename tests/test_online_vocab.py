"""Online vocabularies across a restart: eviction order, row generations."""

import numpy as np

from tagspace.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tagspace.online import Capacity, restore_online
from tagspace.online_vocab import OnlineVocabulary
from tagspace.vocab import Vocabulary
from tests.test_online import post, small_model


def test_a_restored_daemon_checkpoint_keeps_the_eviction_order(tmp_path):
    online = small_model(words=64, tags=4, min_word_count=1, min_tag_count=1)
    # rows 0, 1, 2: 'a', 'b', 'c'; then 'a' and 'c' again: 'b' is the least recently seen
    for clock, tag in [(1, "a"), (2, "b"), (3, "c"), (40, "a"), (41, "c")]:
        online.observe(post(clock, "some words", [tag]), clock=float(clock))
    tagger, arrays = online.snapshot_state()
    save_checkpoint(tmp_path / "m", Checkpoint(tagger, arrays=arrays))
    saved = load_checkpoint(tmp_path / "m")
    back = restore_online(saved.tagger, Capacity(words=64, tags=4, min_tag_count=1),
                          online.train_config, saved.arrays)
    np.testing.assert_array_equal(back.tags.last_seen, online.tags.last_seen)
    back.observe(post(70, "x", ["fourth"]), clock=70.0)  # the last free row
    [admission] = [a for a in back.observe(post(71, "y", ["fifth"]), clock=71.0)
                   if a.token == "fifth"]
    assert admission.evicted == "b"  # the least recently seen, as before the restart
    assert {"a", "c", "fourth", "fifth"} <= set(back.tags.tokens)


def test_a_plain_vocabulary_evicts_the_rarest_tokens_first():
    # a `tagspace train` vocabulary: ids by frequency, no clocks
    saved = Vocabulary(["common", "usual", "rare"], [90, 40, 2])
    vocab = OnlineVocabulary.restore(saved, capacity=3, min_count=1)
    assert not vocab._free
    evicted = [vocab.observe([t], clock=10.0 + i)[0].evicted for i, t in enumerate("xyz")]
    assert evicted == ["rare", "usual", "common"]  # not id order (most frequent first)


def test_a_token_seen_after_the_restore_outlives_unseen_ones():
    saved = Vocabulary(["common", "usual", "rare"], [90, 40, 2])
    vocab = OnlineVocabulary.restore(saved, capacity=3, min_count=1)
    vocab.observe(["rare"], clock=5.0)  # seen again since the restore
    assert vocab.observe(["x"], clock=6.0)[0].evicted == "usual"
    assert vocab.observe(["y"], clock=7.0)[0].evicted == "common"
    assert vocab.observe(["z"], clock=8.0)[0].evicted == "rare"


def test_the_daemon_resumes_eviction_where_it_left_off(tmp_path):
    from daemon.model_hub import ModelHub

    cap = Capacity(words=64, tags=4, min_word_count=1, min_tag_count=1)
    online = small_model(words=64, tags=4, min_word_count=1, min_tag_count=1)
    hub = ModelHub(tmp_path / "m", cap, online.train_config, online.model.config)
    for clock, tag in [(1, "a"), (2, "b"), (3, "c"), (40, "a"), (41, "c"), (42, "d")]:
        hub.online.observe(post(clock, "some words", [tag]), clock=float(clock))
    hub.checkpoint()
    again = ModelHub(tmp_path / "m", cap, online.train_config, online.model.config)
    assert again.source == "checkpoint"
    [admission] = [a for a in again.online.observe(post(50, "z", ["e"]), clock=50.0)
                   if a.token == "e"]
    assert admission.evicted == "b"


def test_a_replica_that_applies_the_journal_stays_identical_through_admissions_and_evictions():
    owner = OnlineVocabulary(Vocabulary(["a", "b"], [5, 3]), capacity=4, min_count=1)
    owner.observe(["c"], clock=1.0)  # before the replica: part of its copy
    replica = owner.replica()
    assert replica.journal is None and not replica.pending
    taken = []
    # d fills the table; e, f, a (evicted by f, back) and g each evict one
    for clock, token in enumerate(["d", "e", "f", "a", "g"], 2):
        owner.observe([token], clock=float(clock))
        if clock % 2:  # applied in batches, as the daemon publishes them
            taken += owner.take_journal()
            replica.apply(taken)
            taken = []
    replica.apply(owner.take_journal())
    assert replica.tokens == owner.tokens and replica._ids == owner._ids
    np.testing.assert_array_equal(replica.active, owner.active)
    assert replica.generation > 0 and owner.evictions == 4
    assert replica.get("b") is None and replica.get("g") == owner.get("g")
    assert owner.take_journal() == []


def test_no_journal_is_kept_without_a_replica():
    vocab = OnlineVocabulary(Vocabulary([], []), capacity=4, min_count=1)
    vocab.observe(["x", "y"], clock=1.0)
    assert vocab.journal is None and vocab.take_journal() == []


def test_first_sight_gives_a_probationary_row_and_a_second_sighting_makes_it_regular():
    vocab = OnlineVocabulary(Vocabulary(["old"], [5]), capacity=4, min_count=2, first_sight=True)
    [new] = vocab.observe(["new"], clock=1.0)
    assert vocab.get("new") == new.row and new.evicted is None
    assert new.row in vocab.probationary_rows()
    assert vocab.observe(["new"], clock=2.0) == []  # already has its row
    assert vocab.counts[new.row] == 2 and new.row not in vocab.probationary_rows()


def test_one_off_tokens_never_push_out_a_regular_row():
    vocab = OnlineVocabulary(Vocabulary(["a", "b"], [5, 3]), capacity=3, min_count=2,
                             first_sight=True)
    vocab.observe(["a", "b"], clock=1.0)
    [x] = vocab.observe(["x"], clock=2.0)  # the last free row, on probation
    [y] = vocab.observe(["y"], clock=3.0)  # the table is full: x, the probationary one, goes
    assert y.row == x.row and y.evicted == "x"
    assert {vocab.get("a"), vocab.get("b")} == {0, 1}
    assert vocab.pending["x"] == 1  # remembered: its next sighting makes it regular
    [again] = vocab.observe(["x"], clock=4.0)
    assert again.evicted == "y" and vocab.counts[again.row] == 2  # regular, y on probation went
    assert vocab.observe(["z"], clock=5.0) == []  # no probationary row left: z waits
    assert vocab.pending["z"] == 1 and vocab.get("z") is None


def test_without_first_sight_a_token_waits_for_min_count():
    vocab = OnlineVocabulary(Vocabulary([], []), capacity=4, min_count=2)
    assert vocab.observe(["new"], clock=1.0) == []
    assert len(vocab.observe(["new"], clock=2.0)) == 1
