"""The live model in shared memory, for the daemon's child processes (trainer, server).

``share`` moves the model's tensors and the vocabularies' per-row arrays that children read
into shared memory, in place: the daemon keeps using the same objects and every write is seen
by the children at once (no copy of the weights, no version to publish). ``attach`` rebuilds
the model in a child over those same pages.
"""

from __future__ import annotations

from typing import Any

import torch

from daemon.in_flight import shared_counts
from tagspace.model import ModelConfig, TagSpaceModel
from tagspace.online import OnlineTagSpace

# (vocabulary, array): the trainer's row watch reads the generations and the mask of tags in
# use; the server reads the tags' live counts (popularity) through its replica.
SHARED_ARRAYS = (("words", "row_generation"), ("tags", "row_generation"), ("tags", "active"),
                 ("tags", "_count_arr"))


def share(online: OnlineTagSpace) -> dict[str, Any]:
    """Shared memory for ``online``'s weights and ``SHARED_ARRAYS`` (once: a second call
    returns the first one's description); what a child needs to ``attach``."""
    done = getattr(online, "_shared", None)
    if done is not None:
        return done
    online.model.share_memory()
    arrays = {}
    for kind, name in SHARED_ARRAYS:
        vocab = online.words if kind == "words" else online.tags
        tensor = torch.from_numpy(getattr(vocab, name).copy()).share_memory_()
        setattr(vocab, name, tensor.numpy())  # numpy view of the shared pages
        arrays[f"{kind}.{name}"] = tensor
    online.steps.row_generation = (online.words.row_generation, online.tags.row_generation)
    shared = {"model_config": online.model.config.to_dict(),
              "state": online.model.state_dict(), "arrays": arrays,
              "pad_id": online.tagger.pad_id, "unk_id": online.tagger.unk_id,
              "in_flight": shared_counts()}  # requests being answered (daemon.in_flight)
    online._shared = shared  # type: ignore[attr-defined]
    return shared


def attach(shared: dict[str, Any]) -> TagSpaceModel:
    """The shared model in a child: no memory of its own, the parent's tensors assigned."""
    with torch.device("meta"):
        model = TagSpaceModel(ModelConfig(**shared["model_config"]))
    model.load_state_dict(shared["state"], assign=True)
    return model
