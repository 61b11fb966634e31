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
