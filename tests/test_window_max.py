"""The fused convolution + max over time against the paper's order of operations."""

import numpy as np
import pytest
import torch

from tagspace.batch import make_batch
from tagspace.model import ModelConfig, TagSpaceModel


def paper_order(model: TagSpaceModel, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tanh -> masked max over time -> tanh -> linear, as autograd sees the paper's layer."""
    enc = model.encoder
    batch, windows = mask.shape
    win = x.unfold(1, enc.kernel, 1).transpose(2, 3).reshape(batch, windows, -1)
    h = torch.tanh(enc.conv(win)).masked_fill(~mask.unsqueeze(-1), -2.0).amax(1)
    return enc.out(torch.tanh(h))


def batch_of_posts(config: ModelConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 3, 7, 12, 12]  # padding windows in all but the longest
    return make_batch([rng.integers(2, config.n_words, size=n) for n in lengths], config, 0, 1)


def model_and_batch(**config_fields):
    torch.manual_seed(0)
    config = ModelConfig(n_words=40, n_tags=3, **config_fields)
    return TagSpaceModel(config), *batch_of_posts(config)


def grads(out: torch.Tensor, model: TagSpaceModel) -> list[torch.Tensor]:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [model.word_emb, model.encoder.conv.weight, model.encoder.conv.bias]
    return list(torch.autograd.grad((out * weights).sum(), params))


@pytest.mark.parametrize("indexed", [False, True])  # the CPU's way and the GPU's
def test_the_fused_layer_computes_the_papers_embedding_and_gradients(indexed, monkeypatch):
    monkeypatch.setattr("tagspace.window_max.indexed_max", lambda device: indexed)
    model, ids, mask = model_and_batch(dim=8, kernel=3, hidden=20)
    fused = model.embed_posts(ids, mask)
    reference = paper_order(model, model.word_emb[ids], mask)
    torch.testing.assert_close(fused, reference)
    for mine, theirs in zip(grads(fused, model), grads(reference, model), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_bf16_gemms_stay_close_to_fp32_and_keep_fp32_gradients():
    model, ids, mask = model_and_batch(dim=16, kernel=5, hidden=64)
    exact = model.embed_posts(ids, mask)
    exact_grads = grads(exact, model)
    model.encoder.compute_dtype = torch.bfloat16
    fast = model.embed_posts(ids, mask)
    assert fast.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.999
    for mine, theirs in zip(grads(fast, model), exact_grads, strict=True):
        assert mine.dtype == torch.float32
        # not equal: bf16 rounding moves a few near-tied maxima to another window
        cosine = torch.nn.functional.cosine_similarity(mine.flatten(), theirs.flatten(), dim=0)
        assert cosine > 0.98


def test_autocast_chooses_the_dtype_of_the_gemms():
    model, ids, mask = model_and_batch(dim=16, hidden=64)
    with torch.no_grad():
        exact = model.embed_posts(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.embed_posts(ids, mask)
    assert not torch.equal(fast.float(), exact)  # bf16 rounding shows: the GEMMs ran in bf16
    assert torch.nn.functional.cosine_similarity(fast.float(), exact).min() > 0.999


@pytest.mark.parametrize("length", [1, 4])
def test_padding_windows_never_win_the_max(length):
    """Huge padding vectors would win every max if the mask were ignored."""
    torch.manual_seed(0)
    config = ModelConfig(dim=8, kernel=5, hidden=16, n_words=20, n_tags=3)
    model = TagSpaceModel(config)
    short = np.arange(2, 2 + length)
    ids, mask = make_batch([short, np.arange(2, 14)], config, 0, 1)
    alone = model.embed_posts(*make_batch([short], config, 0, 1))[0]
    with torch.no_grad():
        model.word_emb[0] = 1e3  # the padding row; the longer post pads the short one's tail
        alone_padded_big = model.embed_posts(*make_batch([short], config, 0, 1))[0]
        in_batch = model.embed_posts(ids, mask)[0]
    assert not torch.allclose(alone, alone_padded_big)  # boundary padding is part of the post
    torch.testing.assert_close(in_batch, alone_padded_big)  # but the tail's windows are not


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_takes_a_plain_path_to_the_same_embedding(dtype):
    model, ids, mask = model_and_batch(dim=16, hidden=64)
    model.encoder.compute_dtype = dtype
    trained_path = model.embed_posts(ids, mask)  # grad on: the autograd function
    with torch.no_grad():
        served_path = model.embed_posts(ids, mask)
    torch.testing.assert_close(served_path, trained_path.detach(),
                               **({} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 0}))
