"""Training data larger than memory: posts streamed from their files, shuffled in a bounded buffer.

``tagspace train --stream`` reads the files once to build the vocabularies (with a cap on the
tokens counted at once, ``Vocabulary.build(max_distinct=...)``) and once per epoch to train.
Nothing holds more than the shuffle buffer's posts, as id arrays. The order is a buffered
shuffle, as in TensorFlow's ``Dataset.shuffle`` and WebDataset: each post read replaces a
uniformly chosen post of the buffer, which is emitted. With a buffer much smaller than the data,
posts far apart in the files stay apart, so files sorted by time or topic train better when
the buffer is large or the files are interleaved (``--data`` many times: read in turn, a
post from each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagspace.batch import MAX_TOKENS
from tagspace.dataset import Post, ReadStats, read_posts
from tagspace.vocab import UNK, Vocabulary

log = logging.getLogger(__name__)
DEFAULT_BUFFER = 100_000


@dataclass
class PostFiles:
    """Tagged posts of one or more files, read again on every pass."""

    paths: Sequence[Path]
    fmt: str = "auto"
    passes: int = field(default=0, init=False)
    size_hint: int | None = field(default=None, init=False)  # posts of the first pass

    def __iter__(self) -> Iterator[Post]:
        """Posts with text and tags, a post from each file in turn."""
        stats = [ReadStats() for _ in self.paths]
        readers = [read_posts(p, self.fmt, s, require_tags=True, require_tokens=True)
                   for p, s in zip(self.paths, stats, strict=True)]
        while readers:
            for reader in list(readers):
                post = next(reader, None)
                if post is None:
                    readers.remove(reader)
                else:
                    yield post
        if self.passes == 0:  # once is enough to say what was skipped
            self.size_hint = sum(s.posts for s in stats)
            for path, s in zip(self.paths, stats, strict=True):
                log.info("%s: %s", path, s.summary())
                if s.posts == 0:
                    raise ValueError(f"{path}: no usable posts ({s.summary()})")
        self.passes += 1


@dataclass
class StreamedPosts:
    """The training posts of ``files`` as (word ids, known tag ids), in buffered-shuffle order;
    posts none of whose tags the vocabulary keeps are skipped (counted in ``no_known_tag``)."""

    files: PostFiles
    words: Vocabulary
    tags: Vocabulary
    buffer: int = DEFAULT_BUFFER
    size_hint: int | None = None  # posts an epoch reads (a progress bar's total)
    no_known_tag: int = 0

    def __post_init__(self) -> None:
        if self.buffer < 1:
            raise ValueError(f"the shuffle buffer must hold >= 1 post, got {self.buffer}")

    def epoch(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        unk = self.words.index(UNK)
        skipped = 0
        pool: list[tuple[np.ndarray, np.ndarray]] = []
        for post in self.files:
            tag_ids = np.asarray(self.tags.encode(post.tags), np.int64)
            if len(tag_ids) == 0:
                skipped += 1
                continue
            item = (np.asarray(self.words.encode(post.tokens[:MAX_TOKENS], unk), np.int64),
                    tag_ids)
            if len(pool) < self.buffer:
                pool.append(item)
                continue
            j = int(rng.integers(self.buffer))
            pool[j], item = item, pool[j]
            yield item
        for j in rng.permutation(len(pool)):
            yield pool[j]
        self.no_known_tag = skipped
