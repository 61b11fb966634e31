import json

import numpy as np
import pytest
import torch

from tagspace.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tagspace.dataset import Post
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.training import train_tagger

POSTS = [
    Post(str(i), "u", None, tuple(text.split()), tags)
    for i, (text, tags) in enumerate([
        ("rain again today", ("weather",)), ("sunny and warm", ("weather", "summer")),
        ("great goal tonight", ("football",)), ("the match was late", ("football",)),
    ] * 5)
]


@pytest.fixture
def tagger():
    return train_tagger(POSTS, "tagspace", ModelConfig(dim=8, hidden=16),
                        TrainConfig(epochs=2, workers=1, batch_size=4), progress=False)


def test_round_trip_keeps_scores_vocab_and_metadata(tagger, tmp_path):
    out = save_checkpoint(tmp_path / "m", Checkpoint(tagger, {"epochs": 2}, {"note": "x"}))
    back = load_checkpoint(out)
    assert back.tagger.words.tokens == tagger.words.tokens
    assert back.tagger.tags.tokens == tagger.tags.tokens
    assert back.train == {"epochs": 2} and back.extra == {"note": "x"}
    np.testing.assert_array_equal(back.tagger.scores(POSTS[:3]), tagger.scores(POSTS[:3]))
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "tags.tsv", "weights.safetensors", "words.tsv"]


def test_overwrite_replaces_and_leaves_no_temporaries(tagger, tmp_path):
    save_checkpoint(tmp_path / "m", Checkpoint(tagger))
    save_checkpoint(tmp_path / "m", Checkpoint(tagger, extra={"v": 2}))
    assert load_checkpoint(tmp_path / "m").extra == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_loading_refuses_wrong_version_shapes_and_non_models(tagger, tmp_path):
    out = save_checkpoint(tmp_path / "m", Checkpoint(tagger))
    with pytest.raises(ValueError, match="not a tagspace model"):
        load_checkpoint(tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["model"]["dim"] = 9
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="size mismatch"):
        load_checkpoint(out)
    config["format_version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format 99"):
        load_checkpoint(out)


def test_weights_file_is_exactly_the_models_state(tagger, tmp_path):
    out = save_checkpoint(tmp_path / "m", Checkpoint(tagger))
    from safetensors.torch import load_file

    state = load_file(str(out / "weights.safetensors"))  # tensors only: no pickle to run
    expected = tagger.model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_never_replaces_a_directory_that_is_not_a_model(tagger, tmp_path):
    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        save_checkpoint(precious, Checkpoint(tagger))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_save_interrupted_between_renames_still_loads(tagger, tmp_path):
    out = save_checkpoint(tmp_path / "m", Checkpoint(tagger, extra={"v": 1}))
    out.rename(tmp_path / ".m.old")  # the state right after the first rename
    assert load_checkpoint(tmp_path / "m").extra == {"v": 1}


def test_corrupt_files_are_clear_errors(tagger, tmp_path):
    out = save_checkpoint(tmp_path / "m", Checkpoint(tagger))
    (out / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load the model"):
        load_checkpoint(out)


def test_suggest_is_the_top_k_of_the_scores_and_survives_a_reload(tagger, tmp_path):
    best = tagger.suggest("rain again today", k=2)
    row = tagger.scores([Post("", None, None, ("rain", "again", "today"), ())])[0]
    top = np.argsort(-row, kind="stable")[:2]
    assert [(s.tag, s.score) for s in best] == [
        (tagger.tags.tokens[i], pytest.approx(float(row[i]))) for i in top]
    # trained (one worker: deterministic) on these posts, each topic gets its own tag first
    assert best[0].tag == "weather"
    assert tagger.suggest("great goal tonight", k=1)[0].tag == "football"
    back = load_checkpoint(save_checkpoint(tmp_path / "m", Checkpoint(tagger))).tagger
    assert back.suggest("rain again today", k=2) == best
    assert tagger.suggest("anything", k=0) == []
