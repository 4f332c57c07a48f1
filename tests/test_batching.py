"""The micro-batcher every hot actor hop goes through (actors/batching.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from actors.batching import Batcher


class Recorder:
    """A fake remote: records each batch; answers when released (or at once)."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_calls_made_together_travel_together_and_get_their_own_results() -> None:
    async def main() -> None:
        remote = Recorder()
        batcher = Batcher(remote)
        outcomes = await asyncio.gather(*[batcher.call(i) for i in range(6)], return_exceptions=True)
        assert remote.batches == [[0, 1, 2, 3, 4, 5]]
        assert outcomes[0] == 0 and outcomes[2] == 20
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "odd 1"

    run(main())


def test_an_idle_hop_sends_at_once() -> None:
    async def main() -> None:
        remote = Recorder()
        batcher = Batcher(remote, max_wait_s=5.0)
        assert await asyncio.wait_for(batcher.call(2), timeout=1.0) == 20

    run(main())


def test_items_queue_while_calls_are_out_then_go_in_one_batch() -> None:
    async def main() -> None:
        remote = Recorder(hold=True)
        batcher = Batcher(remote, max_in_flight=1, max_wait_s=5.0)
        first = asyncio.ensure_future(batcher.call(0))
        await asyncio.sleep(0.01)
        later = [asyncio.ensure_future(batcher.call(i)) for i in (2, 4, 6)]
        await asyncio.sleep(0.01)
        assert remote.batches == [[0]]  # the rest wait for the call in flight
        remote.release.set()
        assert await asyncio.gather(first, *later) == [0, 20, 40, 60]
        assert remote.batches == [[0], [2, 4, 6]]

    run(main())


def test_a_stuck_call_holds_the_queue_only_for_max_wait() -> None:
    async def main() -> None:
        stuck = Recorder(hold=True)
        batcher = Batcher(stuck, max_in_flight=1, max_wait_s=0.05)
        first = asyncio.ensure_future(batcher.call(0))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.call(2))
        await asyncio.sleep(0.2)
        assert stuck.batches == [[0], [2]]  # sent although the first never answered
        stuck.release.set()
        assert await asyncio.gather(first, queued) == [0, 20]

    run(main())


def test_max_items_splits_batches() -> None:
    async def main() -> None:
        remote = Recorder()
        batcher = Batcher(remote, max_items=4)
        await asyncio.gather(*[batcher.call(2 * i) for i in range(10)])
        assert [len(b) for b in remote.batches] == [4, 4, 2]

    run(main())


def test_a_failed_call_fails_every_caller_in_it() -> None:
    async def boom(items: list[int]) -> list[int]:
        raise ConnectionError("actor died")

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(boom)
        outcomes = await asyncio.gather(*[batcher.call(i) for i in range(3)], return_exceptions=True)
        assert all(isinstance(o, ConnectionError) for o in outcomes)

    run(main())


def test_a_short_answer_fails_the_batch_instead_of_hanging() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(short)
        with pytest.raises(RuntimeError, match="answered with 2 results"):
            await asyncio.wait_for(asyncio.gather(*[batcher.call(i) for i in range(3)]), timeout=1.0)

    run(main())
