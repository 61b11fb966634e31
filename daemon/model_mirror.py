"""A serving process's view of the daemon's live model: the same weights, its own vocabularies.

The weights and the word-tag links are the daemon's shared memory (``daemon.shared_model``):
Hogwild updates and new tags' rows are seen at once, nothing is copied or published. The
vocabularies (token <-> row) are Python dicts and lists, which cannot be shared: the mirror
holds replicas made when the process started and applies the daemon's admissions in order as
they come (``OnlineTagSpace.take_admissions``, a few milliseconds behind). The tags' live
counts (popularity) are shared pages too. Versions and their times come with the admissions.

Between an admission in the daemon and its arrival here a re-assigned row already holds the new
token's weights under the old token's name: an evicted tag may rank for a few milliseconds with
its successor's vector. A new tag is suggestible here once its admission has arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from daemon.model_hub import reembed
from daemon.shared_model import attach
from daemon.store import Store, StoredPost
from tagspace.online_vocab import Admission, OnlineVocabulary
from tagspace.personalize import Personalizer
from tagspace.tagger import Tagger


class ModelMirror:
    """``ServedModel`` over the daemon's shared weights and replicas of its vocabularies."""

    def __init__(self, shared: dict[str, Any], words: OnlineVocabulary, tags: OnlineVocabulary,
                 personalizer: Personalizer, version: int, version_time: float):
        tags._count_arr = shared["arrays"]["tags._count_arr"].numpy()  # live popularity
        self._tagger = Tagger(attach(shared), words, tags)
        self.words, self.tags = words, tags
        self.personalizer = personalizer
        self.version, self.version_time = version, version_time
        self.weights_id = 0  # the shared weights are trained, never replaced
        self._lock = threading.Lock()

    @property
    def tagger(self) -> Tagger:
        return self._tagger

    def apply(self, words: Sequence[Admission], tags: Sequence[Admission]) -> None:
        """The daemon's admissions since the last call, in its order."""
        with self._lock:
            self.words.apply(words)
            self.tags.apply(tags)

    def set_version(self, version: int, version_time: float) -> None:
        self.version, self.version_time = version, version_time

    def reembed(self, store: Store, posts: Sequence[StoredPost]) -> tuple[np.ndarray, int, int]:
        return reembed(self, store, posts)
