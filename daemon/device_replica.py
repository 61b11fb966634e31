"""The training process's copy of the shared model on a device (``train_device``, a GPU).

On the CPU the Hogwild workers train the shared tensors themselves (``daemon.train_process``).
A GPU cannot step on host memory, so the training child keeps a copy there and writes back:

- the rows of the lookup tables each applied step changed, at once after the step (a few
  hundred rows of d floats at the daemon's batch sizes), so a new tag's row is served as soon
  as it is trained;
- the convolution and output layers every ``publish_s`` (their 1.5M floats at H = 1000, d =
  256 would cost a copy per step): the served encoder is at most that much older than the
  trained one.

The parent keeps writing rows it admits (``OnlineTagSpace.observe``); they reach the copy
through the row generations the trainer already watches (``pull_rows``), and a row re-assigned
during a step is neither updated (``HogwildWorker.apply``) nor written back here. A restarted
child copies the shared model again: what it trained since the last publication of the layers
is lost (at most ``publish_s``), rows never are.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch

from tagspace.model import TagSpaceModel


class DeviceReplica:
    """``model`` (in shared host memory) copied to ``device``; ``self.model`` is the copy."""

    def __init__(self, shared: TagSpaceModel, device: str, row_generation:
                 tuple[np.ndarray, np.ndarray], publish_s: float = 1.0):
        self.shared, self.publish_s = shared, publish_s
        self.row_generation = row_generation  # the parent's, in shared memory
        self.model = copy.deepcopy(shared).to(device)
        self._published = time.monotonic()

    def publish_rows(self, word_rows: torch.Tensor, tag_rows: torch.Tensor,
                     since: tuple[int, int]) -> None:
        """After a step: its rows into the shared tables, but not rows re-assigned since the
        batch was encoded (generation newer than ``since``: the parent's value stays)."""
        for table, copy_table, rows, gen, seen in (
                (self.shared.word_emb, self.model.word_emb, word_rows, self.row_generation[0],
                 since[0]),
                (self.shared.tag_emb, self.model.tag_emb, tag_rows, self.row_generation[1],
                 since[1])):
            host_rows = rows.cpu().numpy()
            host_rows = host_rows[gen[host_rows] <= seen]
            if len(host_rows):
                index = torch.from_numpy(host_rows)
                values = copy_table.detach()[index.to(copy_table.device)].cpu()
                table.data[index] = values

    def pull_rows(self, word_rows: Sequence[int], tag_rows: Sequence[int]) -> None:
        """Rows the parent (re)assigned: its values into the copy, and its links of words to
        the tags spelled the same (the word-tag bonus), which admissions change."""
        self.model.word_to_tag.copy_(self.shared.word_to_tag)
        for table, copy_table, rows in ((self.shared.word_emb, self.model.word_emb, word_rows),
                                        (self.shared.tag_emb, self.model.tag_emb, tag_rows)):
            if len(rows):
                index = torch.as_tensor(list(rows), dtype=torch.long)
                copy_table.data[index.to(copy_table.device)] = \
                    table.detach()[index].to(copy_table.device)

    def publish_layers(self, force: bool = False) -> bool:
        """The dense weights (encoder, word-tag bonus) into the shared model, if ``publish_s``
        has passed (or ``force``); returns whether it published."""
        if not force and time.monotonic() - self._published < self.publish_s:
            return False
        shared = dict(self.shared.named_parameters())
        for name, p in self.model.named_parameters():
            if name not in ("word_emb", "tag_emb"):
                shared[name].data.copy_(p.detach())
        self._published = time.monotonic()
        return True
