"""Dynamic batching on the event loop (daemon.batching)."""

from __future__ import annotations

import asyncio

import pytest

from daemon.batching import Batcher


def test_requests_waiting_together_are_answered_by_one_call_each_with_its_own_answer():
    calls: list[list[int]] = []

    def double_all(requests):  # type: ignore[no-untyped-def]
        calls.append(list(requests))
        return [2 * r for r in requests]

    batcher = Batcher(double_all, max_batch=3)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(7))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10, 12]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]  # at most max_batch a call, in arrival order
    assert (batcher.batches, batcher.answered) == (3, 7)


def test_every_waiting_request_is_answered_in_the_same_turn_of_the_loop():
    """A remainder beyond max_batch is not put back behind work that arrives meanwhile."""
    order: list[str] = []
    batcher = Batcher(lambda requests: order.extend(requests) or list(requests), max_batch=1)

    async def late() -> None:
        await asyncio.sleep(0)
        order.append("late")

    async def main() -> None:
        await asyncio.gather(batcher.submit("a"), batcher.submit("b"), batcher.submit("c"),
                             late())

    asyncio.run(main())
    assert order[:3] == ["a", "b", "c"]


def test_a_request_alone_is_answered_without_waiting_for_company():
    batcher = Batcher(lambda requests: [r + 1 for r in requests])

    async def main() -> list[int]:
        return [await batcher.submit(1), await batcher.submit(2)]

    assert asyncio.run(main()) == [2, 3]
    assert batcher.batches == 2


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_is_answered():
    def fail_on_zero(requests):  # type: ignore[no-untyped-def]
        if 0 in requests:
            raise ConnectionError("down")
        return list(requests)

    batcher = Batcher(fail_on_zero, max_batch=2)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.submit(i) for i in (0, 1, 2)),
                                    return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, ConnectionError) and isinstance(second, ConnectionError)
    assert third == 2


def test_a_request_cancelled_while_waiting_is_left_out_of_the_call():
    seen: list[list[int]] = []
    batcher = Batcher(lambda requests: seen.append(list(requests)) or list(requests))

    async def main() -> int:
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)  # both are waiting
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == 2
    assert seen == [[2]]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError):
        Batcher(lambda requests: requests, max_batch=0)


def test_a_wrong_number_of_answers_is_an_error_for_each_request_not_a_hang():
    batcher = Batcher(lambda requests: [1])

    async def main() -> list[object]:
        return await asyncio.wait_for(asyncio.gather(
            batcher.submit(1), batcher.submit(2), return_exceptions=True), timeout=5)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_the_limit_may_follow_the_work_and_an_unreadable_one_means_one_request():
    calls: list[list[int]] = []
    limit = [2]

    def record(requests):  # type: ignore[no-untyped-def]
        calls.append(list(requests))
        return list(requests)

    def broken() -> int:
        raise AttributeError("no tagger")

    async def main(batcher: Batcher) -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(4))))

    assert asyncio.run(main(Batcher(record, max_batch=lambda: limit[0]))) == [0, 1, 2, 3]
    assert calls == [[0, 1], [2, 3]]
    calls.clear()
    assert asyncio.run(main(Batcher(record, max_batch=broken))) == [0, 1, 2, 3]
    assert calls == [[0], [1], [2], [3]]
