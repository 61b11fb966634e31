"""A vocabulary that grows while a model trains online, inside a preallocated table.

The lookup tables are allocated once at ``capacity`` rows; a row is either a token or free. An
unknown token is counted (pending) and admitted once it has been seen ``min_count`` times: it
takes a free row, or, when the table is full, the row of the least-recently-seen token (which is
evicted; among tokens last seen at the same time, the one seen least often goes first). The
caller re-initialises the rows of admitted tokens. This is the usual streaming recipe (count-min
admission + LRU eviction, as in Twitter's and Monolith's online embedding tables): memory is
fixed, rare noise never enters, and a new hashtag becomes usable as soon as it is frequent
enough.

``first_sight`` (the daemon's tags) admits a token at its first sighting as well, on probation,
as segmented LRU caches and 2Q do: a row whose count is under ``min_count`` is probationary,
and it takes only a free row or the least recently seen probationary one, never a regular row.
A regular admission (``min_count`` sightings) takes a free row, else the least recently seen
probationary row, else the least recently seen row. A probationary token that is evicted keeps
its count as pending, so its next sighting makes it regular. So a hashtag is suggestible from
its first post, and one-off hashtags cycle through the rows the rare ones hold without pushing
out the tags seen again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tagspace.vocab import Vocabulary

FREE_PREFIX = "<free:"  # a free row's placeholder; the tokenizer never yields '<free:'
MAX_PENDING_FACTOR = 4  # pending counts kept for at most this x capacity tokens


@dataclass(frozen=True)
class Admission:
    row: int
    token: str
    evicted: str | None  # the token that held the row before, if any


class OnlineVocabulary(Vocabulary):
    """``capacity`` rows: specials first, then tokens and free rows (placeholders)."""

    def __init__(self, base: Vocabulary, capacity: int, min_count: int = 2,
                 first_sight: bool = False):
        if capacity < len(base):
            raise ValueError(f"capacity {capacity} < the {len(base)} tokens already known")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        free = [f"{FREE_PREFIX}{i}>" for i in range(len(base), capacity)]
        tokens = base.tokens[len(base.specials):] + free
        counts = base.counts[len(base.specials):] + [0] * len(free)
        super().__init__(tokens, counts, base.specials)
        self.capacity = capacity
        self.min_count = min_count
        self.first_sight = first_sight
        self.active = np.zeros(capacity, bool)
        self.active[: len(base)] = True
        self._free = list(range(capacity - 1, len(base) - 1, -1))  # pop() gives the lowest row
        for placeholder in free:
            del self._ids[placeholder]
        self.last_seen = np.zeros(capacity)
        self.last_seen[: len(base.specials)] = np.inf  # specials are never evicted
        self._count_arr = np.zeros(capacity, np.int64)  # counts, as an array (eviction ties)
        self._count_arr[: len(self.counts)] = self.counts
        self.pending: Counter[str] = Counter()
        self.evictions = 0
        # Row generations: ``generation`` counts the times a row got a new token, and each row
        # keeps the count at which its token got it. A Hogwild step reads ``generation`` before
        # encoding its batch and skips the rows renewed since (their gradient is another
        # token's).
        self.generation = 0
        self.row_generation = np.zeros(capacity, np.int64)
        # Admissions since the last ``take_journal``, for replicas; None: nobody follows.
        self.journal: list[Admission] | None = None

    @classmethod
    def restore(cls, saved: Vocabulary, capacity: int, min_count: int = 2,
                last_seen: np.ndarray | None = None, clock: float = 0.0,
                first_sight: bool = False) -> OnlineVocabulary:
        """From a saved vocabulary: a snapshot of an online one (free rows as placeholders,
        rows kept) or a plain one; ``capacity`` rows at least.

        ``last_seen`` (one clock per saved row, as saved by ``OnlineTagSpace.snapshot_state``)
        keeps the eviction order across a restart. Without it (a ``tagspace train`` vocabulary)
        every token is last seen at ``clock``: tokens the stream does not bring again go first,
        the rarest of them first (ties are broken by count), never simply in id order.
        """
        if last_seen is not None and len(last_seen) != len(saved):
            raise ValueError(f"{len(last_seen)} clocks for a vocabulary of {len(saved)}")
        known = [(t, c) for t, c in zip(saved.tokens, saved.counts, strict=True)
                 if t not in saved.specials]
        capacity = max(capacity, len(saved))
        vocab = cls(Vocabulary([], [], saved.specials), capacity, min_count, first_sight)
        for row, (token, count) in enumerate(known, len(saved.specials)):
            if not token.startswith(FREE_PREFIX):
                vocab._assign(row, token)
                vocab._set_count(row, count)
                vocab.last_seen[row] = clock if last_seen is None else float(last_seen[row])
        vocab._free = [r for r in range(capacity - 1, len(saved.specials) - 1, -1)
                       if not vocab.active[r]]
        return vocab

    @property
    def size(self) -> int:
        """Rows holding a token (specials included)."""
        return int(self.active.sum())

    def active_mask(self) -> np.ndarray:
        return self.active

    def observe(self, tokens: Iterable[str], clock: float) -> list[Admission]:
        """Count one post's tokens at time ``clock``; admit those now frequent enough."""
        admitted: list[Admission] = []
        for token in dict.fromkeys(tokens):  # once per post
            row = self._ids.get(token)
            if row is not None:
                self._set_count(row, self.counts[row] + 1)
                self.last_seen[row] = max(self.last_seen[row], clock)
                continue
            if token.startswith(FREE_PREFIX):
                continue
            self.pending[token] += 1
            if self.pending[token] >= self.min_count:
                admitted.append(self._admit(token, clock))
            elif self.first_sight and (self._free or self.probationary_rows().size):
                admitted.append(self._admit(token, clock))  # on probation
        if len(self.pending) > MAX_PENDING_FACTOR * self.capacity:
            self._prune_pending()
        return admitted

    def _admit(self, token: str, clock: float) -> Admission:
        count = self.pending.pop(token)
        evicted = None
        if self._free:
            row = self._free.pop()
        else:
            row = self._victim()
            evicted = self.tokens[row]
            del self._ids[evicted]
            self.evictions += 1
            if self.first_sight and self.counts[row] < self.min_count:
                self.pending[evicted] += self.counts[row]  # seen again, it will be regular
        self._assign(row, token)
        self._set_count(row, count)
        self.last_seen[row] = clock
        self.renew([row])
        admission = Admission(row, token, evicted)
        if self.journal is not None:
            self.journal.append(admission)
        return admission

    # replicas: another process's read-only copy, kept in step by the owner's admissions
    def replica(self) -> OnlineVocabulary:
        """A copy to hand to another process (no pending counts, no journal) and, from the
        first replica on, a journal here of the admissions replicas must ``apply`` to stay in
        step. A replica made after some entries of the journal holds them already: applying
        them again, in order, ends in the same state."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.tokens, copy.counts, copy._ids = list(self.tokens), list(self.counts), \
            dict(self._ids)
        for name in ("active", "last_seen", "_count_arr", "row_generation"):
            setattr(copy, name, getattr(self, name).copy())
        copy._free, copy.pending, copy.journal = [], Counter(), None
        if self.journal is None:
            self.journal = []
        return copy

    def take_journal(self) -> list[Admission]:
        """The admissions since the last call (empty when no replica follows)."""
        taken, self.journal = self.journal or [], [] if self.journal is not None else None
        return taken

    def apply(self, admissions: Iterable[Admission]) -> None:
        """A replica: take the owner's admissions, in the owner's order. The row's name and
        ``active`` change before ``generation`` moves, so a reader that read the generation
        first never caches a stale view."""
        for a in admissions:
            if a.evicted is not None and self._ids.get(a.evicted) == a.row:
                del self._ids[a.evicted]
            self._assign(a.row, a.token)
            self.generation += 1
            self.row_generation[a.row] = self.generation

    def renew(self, rows: Iterable[int]) -> None:
        """Mark rows as holding something new (a token, re-initialised weights): steps that
        began before do not update them."""
        for row in rows:
            self.generation += 1
            self.row_generation[row] = self.generation

    def _victim(self) -> int:
        """The least recently seen row (with ``first_sight``, a probationary one first); among
        those seen last at the same time, the least counted (rare tokens go before frequent
        ones), then the lowest row."""
        rows = self.probationary_rows() if self.first_sight else np.zeros(0, np.int64)
        if not rows.size:
            rows = np.arange(self.capacity)
        seen = self.last_seen[rows]
        oldest = rows[seen == seen.min()]
        if len(oldest) == 1:
            return int(oldest[0])
        return int(oldest[np.argmin(self._count_arr[oldest])])

    def probationary_rows(self) -> np.ndarray:
        """Rows holding a token seen fewer than ``min_count`` times (never a special)."""
        return np.flatnonzero(self.active & (self._count_arr < self.min_count)
                              & np.isfinite(self.last_seen))

    def regular_rows(self) -> np.ndarray:
        """Rows holding a token seen ``min_count`` times or more (or restored as such)."""
        return np.flatnonzero(self.active & (self._count_arr >= self.min_count))

    def _set_count(self, row: int, count: int) -> None:
        self.counts[row] = count
        self._count_arr[row] = count

    def _assign(self, row: int, token: str) -> None:
        self.tokens[row] = token
        self._ids[token] = row
        self.active[row] = True

    def _prune_pending(self) -> None:
        # Lossy counting: forget the rarest half of the candidates (mostly one-off noise).
        keep = self.pending.most_common(len(self.pending) // 2)
        self.pending = Counter(dict(keep))
