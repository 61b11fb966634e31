"""Requests that are waiting together, answered by one call (dynamic batching, as model servers
such as Triton and TF Serving do it).

Under load, requests queue on the serving process's event loop; those whose bodies arrived by
the time the loop gets to them are answered by one ``answer_many`` call: for suggestions one
encode of their posts, one product with the tag table (19k x 64 floats, 4.9 MB, more than a
core's cache, read once for the batch instead of once a request) and one Redis round trip. At
low load a batch is one request and nothing waits for company (no timer: a batch is what is
there when the loop comes to it). Each answer is the one the request would get alone. Measured
(docs/PERFORMANCE.md, four interleaved pairs at the issue's set-up): batches of 1.25-1.41 on
average at 100 + 100 requests/s, and both routes' p99 lower in every pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Request = TypeVar("Request")
Answer = TypeVar("Answer")

MAX_BATCH = 32  # requests per call: bounds one call's time on the loop


class Batcher(Generic[Request, Answer]):
    """``await submit(request)``: the answer of ``answer_many`` for it, called on the event
    loop with every request submitted before the loop ran the batch (at most ``max_batch``)."""

    def __init__(self, answer_many: Callable[[Sequence[Request]], Sequence[Answer]],
                 max_batch: int | Callable[[], int] = MAX_BATCH,
                 on_batch: Callable[[int], object] | None = None):
        """``max_batch``: a number, or a function read at each batch (a limit that follows
        the work a request costs)."""
        if isinstance(max_batch, int) and max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.answer_many = answer_many
        self._max_batch = max_batch
        self.on_batch = on_batch  # given each answered batch's size (a metric)
        self._waiting: list[tuple[Request, asyncio.Future[Answer]]] = []
        self.batches = self.answered = 0  # calls and requests (read by tests and benches)

    async def submit(self, request: Request) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._waiting.append((request, future))
        if len(self._waiting) == 1:  # after the requests already ready to run on the loop
            loop.call_soon(self._run)
        return await future

    @property
    def max_batch(self) -> int:
        limit = self._max_batch
        return max(1, limit() if callable(limit) else limit)

    def _run(self) -> None:
        """Every request waiting now, ``max_batch`` at a time (all of them in this turn of the
        loop: a remainder put back on the loop would wait behind whatever arrived meanwhile)."""
        try:
            size = self.max_batch
        except Exception:  # a limit that cannot be read must not leave requests waiting
            log.exception("batch limit unavailable: answering one request a call")
            size = 1
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), size):
            self._answer([(r, f) for r, f in waiting[start:start + size] if not f.done()])

    def _answer(self, batch: list[tuple[Request, asyncio.Future[Answer]]]) -> None:
        if not batch:
            return
        try:
            answers = list(self.answer_many([r for r, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers to {len(batch)} requests")
        except Exception as e:  # every request of the batch gets the error to handle
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.batches += 1
        self.answered += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for (_, future), answer in zip(batch, answers, strict=True):  # (checked above)
            if not future.done():  # (its client may have gone meanwhile)
                future.set_result(answer)
