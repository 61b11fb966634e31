"""Quality: train on a small real subset with a fixed seed and assert a P@1 threshold.

Cooking Stack Exchange (bundled, CC-BY-SA 3.0): 4,000 training titles, 1,000 held-out ones.
Measured with these settings (2 cores): #TagSpace P@1 0.559, WSABIE 0.499, Frequency 0.105;
the thresholds leave room for Hogwild scheduling noise yet catch any real breakage.
"""

from itertools import islice

import pytest

from tagspace.baselines import FrequencyScorer
from tagspace.dataset import read_posts
from tagspace.evaluate import evaluate
from tagspace.hogwild import TrainConfig
from tagspace.model import ModelConfig
from tagspace.training import VocabConfig, build_vocabularies, train_tagger
from tests.conftest import COOKING_TRAIN, COOKING_VALID

pytestmark = pytest.mark.quality


@pytest.fixture(scope="module")
def cooking_subset():
    train = list(islice(read_posts(COOKING_TRAIN, require_tags=True), 4000))
    valid = list(islice(read_posts(COOKING_VALID, require_tags=True), 1000))
    return train, valid


def test_wsabie_and_tagspace_learn_real_tags(cooking_subset):
    train, valid = cooking_subset
    vocabs = build_vocabularies(train, VocabConfig())
    frequency = evaluate(FrequencyScorer(vocabs[1]), valid, progress=False).metrics.p_at_1
    wsabie = train_tagger(train, "wsabie", ModelConfig(dim=32), TrainConfig(epochs=5, lr=0.05),
                          vocabularies=vocabs, progress=False)
    p_wsabie = evaluate(wsabie, valid, progress=False).metrics.p_at_1
    tagspace = train_tagger(
        train, "tagspace", ModelConfig(dim=32, hidden=200, dropout=0.3),
        TrainConfig(epochs=4, lr=0.01), vocabularies=vocabs, init_from=wsabie, progress=False,
    )
    p_tagspace = evaluate(tagspace, valid, progress=False).metrics.p_at_1
    print(f"P@1 frequency {frequency:.3f} wsabie {p_wsabie:.3f} tagspace {p_tagspace:.3f}")
    assert frequency < 0.15
    assert p_wsabie > 0.40
    assert p_tagspace > 0.45
