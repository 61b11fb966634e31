from pathlib import Path

import pytest

from tagspace.vocab import PAD, UNK, Vocabulary


def test_counts_min_count_cap_and_stable_ties():
    v = Vocabulary.build([["b", "a", "c"], ["a", "b"], ["a", "d"]], min_count=2, max_size=4,
                         specials=(PAD, UNK))
    assert v.tokens == [PAD, UNK, "a", "b"]  # c, d below min_count; a before b by count
    assert v.counts == [0, 0, 3, 2]
    v2 = Vocabulary.build([["x", "y"], ["y", "x"]])
    assert v2.tokens == ["x", "y"]  # tie broken by first appearance


def test_cap_counts_specials():
    v = Vocabulary.build([["a", "b", "c"]], max_size=3, specials=(PAD, UNK))
    assert len(v) == 3 and v.tokens[:2] == [PAD, UNK]


def test_encode_unknown_mapping_or_dropping():
    v = Vocabulary.build([["a", "b"]], specials=(PAD, UNK))
    assert v.encode(["a", "zz", "b"], unknown=v.index(UNK)) == [2, 1, 3]
    assert v.encode(["a", "zz"]) == [2]


def test_round_trip_with_awkward_tokens(tmp_path: Path):
    v = Vocabulary.build([["tab\there", "back\\slash", "new\nline", "ok"]], specials=(PAD, UNK))
    v.save(tmp_path / "v.tsv")
    back = Vocabulary.load(tmp_path / "v.tsv", (PAD, UNK))
    assert back.tokens == v.tokens and back.counts == v.counts


@pytest.mark.parametrize("tokens", [[], ["plain", "words", "#tag"], ["one\\odd", "plain"]])
def test_round_trip_of_plain_and_empty_vocabularies(tmp_path: Path, tokens):
    v = Vocabulary(tokens, list(range(1, len(tokens) + 1)))
    v.save(tmp_path / "v.tsv")
    assert (tmp_path / "v.tsv").read_text().count("\n") == len(tokens)
    back = Vocabulary.load(tmp_path / "v.tsv")
    assert back.tokens == v.tokens and back.counts == v.counts


def test_load_rejects_garbage(tmp_path: Path):
    (tmp_path / "v.tsv").write_text("no count here\n")
    with pytest.raises(ValueError, match="token<TAB>count"):
        Vocabulary.load(tmp_path / "v.tsv")


def test_min_count_must_be_positive():
    with pytest.raises(ValueError):
        Vocabulary.build([["a"]], min_count=0)
