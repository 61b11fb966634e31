"""Training from files larger than memory: buffered shuffles, capped counts, --stream end to end."""

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from tagspace.cli import main
from tagspace.stream import PostFiles, StreamedPosts
from tagspace.training import VocabConfig, build_vocabularies
from tagspace.vocab import TokenCounter, Vocabulary
from tests.conftest import COOKING_TRAIN, COOKING_VALID


def write_posts(path, posts):
    path.write_text("".join(json.dumps({"post_id": f"{path.stem}{i}", "user_id": "u", "text": text,
                                        "tags": tags}) + "\n"
                            for i, (text, tags) in enumerate(posts)))
    return path


@pytest.fixture
def two_files(tmp_path):
    a = write_posts(tmp_path / "a.jsonl", [(f"alpha word{i}", ["a"]) for i in range(30)])
    b = write_posts(tmp_path / "b.jsonl", [(f"beta word{i}", ["b"]) for i in range(10)]
                    + [("no tags here", [])])
    return a, b


def streamed(files, buffer):
    words, tags = build_vocabularies(files, VocabConfig())
    return StreamedPosts(files, words, tags, buffer=buffer), words


def test_files_are_read_in_turn_and_untagged_posts_left_out(two_files):
    files = PostFiles(list(two_files))
    first = [p.tokens[0] for p in islice(iter(files), 6)]
    assert first == ["alpha", "beta"] * 3
    assert files.size_hint is None  # a partial pass counts nothing
    assert len(list(files)) == 40
    assert files.size_hint == 40


@pytest.mark.parametrize("buffer", [1, 7, 1000])
def test_an_epoch_emits_every_post_once(two_files, buffer):
    data, words = streamed(PostFiles(list(two_files)), buffer)
    seen = [tuple(w.tolist()) for w, _ in data.epoch(np.random.default_rng(0))]
    expected = [tuple(words.encode(p.tokens)) for p in PostFiles(list(two_files))]
    assert Counter(seen) == Counter(expected)
    if buffer == 1:
        assert seen == expected  # a buffer of one keeps the files' order
    else:
        assert seen != expected


def test_a_large_buffer_shuffles_like_a_permutation(two_files):
    """With the buffer above the data, the position of the first post is uniform."""
    data, words = streamed(PostFiles(list(two_files)), 1000)
    first = tuple(words.encode(["alpha", "word0"]))
    positions = [next(i for i, (w, _) in enumerate(data.epoch(np.random.default_rng(s)))
                      if tuple(w.tolist()) == first) for s in range(300)]
    assert 14 < np.mean(positions) < 25  # uniform over 0..39: mean 19.5


def test_capped_counts_keep_the_frequent_tokens_under_the_cap():
    counter = TokenCounter(max_distinct=200)
    for i in range(2000):
        counter.update(["common", f"rare{i}", f"sometimes{i % 20}"])
        assert len(counter.counts) <= 200
    vocab = Vocabulary.from_counts(counter, min_count=5)
    assert counter.pruned > 0
    assert vocab.tokens[0] == "common"
    assert {f"sometimes{i}" for i in range(20)} <= set(vocab.tokens)
    assert not any(t.startswith("rare") for t in vocab.tokens)


def test_train_stream_end_to_end_matches_in_memory_training(tmp_path):
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("".join(islice(COOKING_TRAIN.open(), 1500)))
    valid.write_text("".join(islice(COOKING_VALID.open(), 300)))
    fast = ["--dim", "32", "--hidden", "64", "--epochs", "3", "--init-epochs", "3", "--quiet",
            "--valid", str(valid)]
    results = {}
    for mode in ("memory", "stream"):
        extra = ["--stream", "--shuffle-buffer", "200"] if mode == "stream" else []
        out = tmp_path / mode
        assert main(["train", "--data", str(train), "--out", str(out), "--json",
                     str(tmp_path / f"{mode}.json"), *fast, *extra]) == 0
        results[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    assert results["stream"]["p_at_1"] > 0.5 * results["memory"]["p_at_1"] > 0
