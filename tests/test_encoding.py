"""Embedding many posts: length-grouped batches and bf16 autocast (``Tagger.embed_all``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagspace.batch import length_groups, make_batch
from tagspace.checkpoint import WORD_SPECIALS
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.precision import cpu_has_bf16, use_bf16
from tagspace.tagger import Tagger
from tagspace.vocab import Vocabulary

WORDS = [f"w{i}" for i in range(40)]


def tagger(dim: int = 16, hidden: int = 64) -> Tagger:
    torch.manual_seed(0)
    words = Vocabulary(WORDS, list(range(len(WORDS), 0, -1)), WORD_SPECIALS)
    tags = Vocabulary(["a", "b", "c"], [3, 2, 1])
    config = ModelConfig(encoder="conv", dim=dim, hidden=hidden, dropout=0.0,
                         n_words=len(words), n_tags=len(tags))
    return Tagger(TagSpaceModel(config), words, tags)


def posts(n: int, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(0, 30))]
            for _ in range(n)]


def test_length_groups_cover_every_post_once_in_groups_of_similar_length() -> None:
    lengths = [5, 1, 9, 1, 30, 2, 7]
    groups = length_groups(lengths, size=3)
    assert [len(g) for g in groups] == [3, 3, 1]
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)  # each group holds the next shortest posts


def test_an_embedding_does_not_depend_on_the_other_posts_of_its_batch() -> None:
    t = tagger()
    tokens = posts(150)
    alone = np.stack([t.embed_all([p])[0] for p in tokens])
    for size in (1, 7, 64, 500):
        np.testing.assert_allclose(t.embed_all(tokens, batch=size), alone, atol=1e-6)
    # and equal to one padded batch in arrival order, as the encoder computed before
    ids, mask = make_batch([t.word_ids(p) for p in tokens], t.model.config, t.pad_id, t.unk_id)
    with torch.no_grad():
        np.testing.assert_allclose(t.model.embed_posts(ids, mask).numpy(), alone, atol=1e-6)


def test_bf16_embeddings_point_where_the_fp32_ones_do() -> None:
    t = tagger()
    tokens = posts(200, seed=2)
    exact, low = t.embed_all(tokens), t.embed_all(tokens, bf16=True)
    assert low.dtype == np.float32 and low.shape == exact.shape
    cos = (exact * low).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(low, axis=1)
    assert cos.min() >= 0.999
    assert not np.array_equal(exact, low)  # bf16 did run: the values moved


def test_the_precision_choice() -> None:
    assert use_bf16("on") and not use_bf16("off")
    assert use_bf16("auto") == cpu_has_bf16()
    with pytest.raises(ValueError, match="auto, on, off"):
        use_bf16("fast")
