"""Hogwild steps on the online model: rows that change hands mid-step, dropped steps."""

import torch

from tagspace.online import OnlineTagSpace
from tests.test_online import post, small_model


def full_model() -> OnlineTagSpace:
    """Every word and tag row in use: the next new token evicts the least recently seen."""
    online = small_model(words=8, tags=3, min_word_count=1, min_tag_count=1)
    online.observe(post(0, "old pasta goal", ["old"]), clock=0.0)
    online.observe(post(1, "pasta goal code", ["food"]), clock=1.0)
    online.observe(post(2, "pasta goal code bug deploy", ["tech"]), clock=2.0)
    assert online.words.size == 8 and online.tags.size == 3
    return online


def evict_during_the_step(online: OnlineTagSpace, evict):  # type: ignore[no-untyped-def]
    """Run ``evict`` once in the middle of the next step, after its batch was encoded and
    before its update (as another thread's ``observe`` could), deterministically: a hook on
    the worker's encoder. Returns the tables as they were right after ``evict``."""
    worker = online.steps._worker()
    seen = {}

    def hook(module, inputs, output):  # type: ignore[no-untyped-def]
        if not seen:
            evict()
            seen["words"] = online.model.word_emb.detach().clone()
            seen["tags"] = online.model.tag_emb.detach().clone()

    worker.encoder.register_forward_hook(hook)
    return seen


def test_a_row_evicted_during_a_step_does_not_get_the_old_tokens_gradient():
    online = full_model()
    old_tag, old_word = online.tags.index("old"), online.words.index("old")
    seen = evict_during_the_step(
        online, lambda: online.observe(post(3, "fresh", ["fresh"]), clock=3.0))
    step = online.train([post(4, "old pasta goal", ["old", "food"])] * 4)
    # 'old' (tag and word) was the least recently seen: its rows now hold 'fresh'
    assert online.tags.index("fresh") == old_tag and online.words.index("fresh") == old_word
    after_words, after_tags = online.model.word_emb.detach(), online.model.tag_emb.detach()
    torch.testing.assert_close(after_tags[old_tag], seen["tags"][old_tag], rtol=0, atol=0)
    torch.testing.assert_close(after_words[old_word], seen["words"][old_word], rtol=0, atol=0)
    assert step.examples == 4 and step.stale_rows == 2
    # the rest of the step was applied: the other gold tag and the batch's other words moved
    food, pasta = online.tags.index("food"), online.words.index("pasta")
    assert not torch.equal(after_tags[food], seen["tags"][food])
    assert not torch.equal(after_words[pasta], seen["words"][pasta])


def test_a_step_without_evictions_updates_every_row_it_touches():
    online = full_model()
    seen = evict_during_the_step(online, lambda: None)
    step = online.train([post(4, "old pasta goal", ["old", "food"])] * 4)
    assert step.stale_rows == 0
    old_word = online.words.index("old")  # the same batch as above: now its row moves
    assert not torch.equal(online.model.word_emb.detach()[old_word], seen["words"][old_word])


def test_an_exploding_loss_drops_the_step_and_leaves_the_model_as_it_was():
    from tagspace.online import EXPLODING_LOSS, Guard
    from tests.test_online import topics

    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    online.steps.guard = Guard(warmup_steps=5)
    stream = topics(48)
    for p in stream:
        online.observe(p, clock=float(p.ts))
    for i in range(0, 40, 8):
        assert online.train(stream[i:i + 8]).dropped is None
    mean = online.loss_mean
    assert online.loss_steps == 5 and mean > 0
    with torch.no_grad():  # a blow-up: every score x 1e4
        online.model.tag_emb.mul_(1e4)
    state = {k: v.detach().clone() for k, v in online.model.state_dict().items()}
    step = online.train(stream[40:48])
    assert step.dropped == EXPLODING_LOSS and step.examples == 0
    assert step.skipped == {EXPLODING_LOSS: 8}
    for k, v in online.model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert online.loss_mean == mean and online.loss_steps == 5  # not learnt from


def test_a_non_finite_gradient_fails_the_check():
    from tagspace.hogwild import PendingStep, StepStats

    rows = torch.arange(2)
    ok = PendingStep(StepStats(1, 0.5, 1, 1.0), rows, rows, [], (torch.ones(2, 4),) * 2)
    assert ok.is_finite()
    for bad in (float("nan"), float("inf"), 1e30):  # 1e30: its square overflows AdaGrad's sum
        grads = (torch.ones(2, 4), torch.full((2, 4), bad))
        assert not PendingStep(StepStats(1, 0.5, 1, 1.0), rows, rows, [], grads).is_finite()
    assert not PendingStep(StepStats(1, float("nan"), 0, 1.0), rows, rows, [], (),
                           finite_forward=False).is_finite()


def test_a_nan_in_the_model_drops_the_step():
    from tagspace.online import NONFINITE
    from tests.test_online import topics

    online = small_model(words=64, tags=16, min_word_count=1, min_tag_count=1)
    stream = topics(8)
    for p in stream:
        online.observe(p, clock=float(p.ts))
    with torch.no_grad():
        online.model.word_emb[online.words.index("the"), 0] = float("nan")
    before = online.model.tag_emb.detach().clone()
    step = online.train(stream)
    assert step.dropped == NONFINITE and step.skipped == {NONFINITE: 8}
    torch.testing.assert_close(online.model.tag_emb.detach(), before, rtol=0, atol=0)
