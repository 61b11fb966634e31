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
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

MAX_BATCH = 32  # requests per call: bounds one call's time on the loop


class Batcher(Generic[Request, Answer]):
    """``await submit(request)``: the answer of ``answer_many`` for it, called on the event
    loop with every request submitted before the loop ran the batch (at most ``max_batch``)."""

    def __init__(self, answer_many: Callable[[Sequence[Request]], Sequence[Answer]],
                 max_batch: int = MAX_BATCH, on_batch: Callable[[int], object] | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.answer_many, self.max_batch = answer_many, max_batch
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

    def _run(self) -> None:
        batch = [(r, f) for r, f in self._waiting[:self.max_batch] if not f.done()]
        self._waiting = self._waiting[self.max_batch:]
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._run)
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
