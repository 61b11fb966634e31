import numpy as np
import pytest
import torch

from tagspace.batch import make_batch
from tagspace.model import ModelConfig, TagSpaceModel

PAD, UNK = 0, 1


def test_conv_shapes_and_boundary_padding():
    config = ModelConfig(dim=8, kernel=5, hidden=16, n_words=20, n_tags=7)
    ids, mask = make_batch([np.array([5, 6, 7]), np.array([8])], config, PAD, UNK)
    # 2 padding vectors at each end; the shorter post is right-filled and masked.
    assert ids.tolist() == [[0, 0, 5, 6, 7, 0, 0], [0, 0, 8, 0, 0, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    model = TagSpaceModel(config)
    emb = model.embed_posts(ids, mask)
    assert emb.shape == (2, 8)
    assert model.score_all(emb).shape == (2, 7)


def test_batch_padding_does_not_change_a_posts_embedding():
    config = ModelConfig(dim=8, kernel=5, hidden=16, n_words=20, n_tags=3)
    model = TagSpaceModel(config).eval()
    short = np.array([3, 4])
    alone = model.embed_posts(*make_batch([short], config, PAD, UNK))
    batched = model.embed_posts(*make_batch([short, np.arange(2, 15)], config, PAD, UNK))
    torch.testing.assert_close(alone[0], batched[0])


def test_conv_matches_the_paper_step_by_step():
    config = ModelConfig(dim=4, kernel=3, hidden=5, n_words=10, n_tags=2)
    model = TagSpaceModel(config)
    ids, mask = make_batch([np.array([2, 3, 4, 5])], config, PAD, UNK)
    x = model.word_emb[ids[0]]  # (L, d) with one padding vector each side
    windows = torch.stack([x[i : i + 3].reshape(-1) for i in range(4)])  # (l, K*d)
    h = torch.tanh(windows @ model.encoder.conv.weight.T + model.encoder.conv.bias)
    expected = model.encoder.out(torch.tanh(h.max(0).values))
    torch.testing.assert_close(model.embed_posts(ids, mask)[0], expected)


def test_word_order_matters_for_conv_not_for_bag():
    conv = TagSpaceModel(ModelConfig(dim=8, kernel=3, hidden=32, n_words=10, n_tags=2))
    bag = TagSpaceModel(ModelConfig(encoder="bag", dim=8, n_words=10, n_tags=2))
    a, b = np.array([2, 3, 4, 5]), np.array([5, 4, 3, 2])
    for model, same in ((conv, False), (bag, True)):
        ea, eb = model.embed_posts(*make_batch([a, b], model.config, PAD, UNK))
        assert torch.allclose(ea, eb, atol=1e-6) is same


def test_empty_post_reads_as_unknown():
    config = ModelConfig(dim=4, kernel=5, hidden=8, n_words=5, n_tags=2)
    ids, mask = make_batch([np.array([], np.int64)], config, PAD, UNK)
    assert ids[0, 2] == UNK and mask.sum() == 1


def test_config_validation():
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="rnn")
    with pytest.raises(ValueError, match="dim"):
        ModelConfig(dim=0)


def test_word_tag_sharing_adds_the_learned_bonus_to_tags_in_the_text():
    config = ModelConfig(dim=4, kernel=3, hidden=8, n_words=5, n_tags=3, word_tag_share=True)
    model = TagSpaceModel(config)
    model.link_words_to_tags(["<pad>", "<unk>", "rain", "sun", "goal"], {"goal": 0, "rain": 2})
    with torch.no_grad():
        model.copy_weight.fill_(5.0)
    ids, mask = make_batch([np.array([2, 3]), np.array([3])], config, PAD, UNK)
    emb = model.embed_posts(ids, mask)
    plain = emb @ model.tag_emb.T
    diff = model.score_all(emb, ids) - plain
    torch.testing.assert_close(diff, torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]))


def test_hogwild_learns_a_positive_copy_weight_when_tags_are_words():
    from tagspace.batch import EncodedPosts
    from tagspace.hogwild import HogwildTrainer, TrainConfig

    config = ModelConfig(dim=8, hidden=16, n_words=40, n_tags=30, word_tag_share=True)
    model = TagSpaceModel(config)
    words = [f"w{i}" for i in range(40)]
    model.link_words_to_tags(words, {f"w{i}": i - 10 for i in range(10, 40)})
    rng = np.random.default_rng(0)
    # every post's tag is one of its own words, among random others
    posts = [rng.integers(10, 40, size=4) for _ in range(400)]
    data = EncodedPosts(posts, [np.array([p[0] - 10]) for p in posts], np.zeros(400, np.int64))
    HogwildTrainer(model, TrainConfig(epochs=2, workers=2, lr=0.05, batch_size=16), 0, 1).fit(
        data, progress=False)
    assert float(model.copy_weight.detach()) > 0.1
