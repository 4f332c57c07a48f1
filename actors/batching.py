"""Micro-batching for hot actor calls: callers await one item each; the batcher sends up to
`max_items` items in one call after at most `max_wait_s`, and hands each caller its own result
(or its own exception). A Ray call costs about as much as the work it carries here, so every hot
hop (gateway → shard, shard → link, link → vault) goes through one of these."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(self, send: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
                 max_items: int = 128, max_wait_s: float = 0.002) -> None:
        self.send = send
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self.flusher: asyncio.TimerHandle | None = None

    async def call(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.max_items:
            self._flush()
        elif self.flusher is None:
            self.flusher = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            self.flusher = None
        batch, self.pending = self.pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self.send([item for item, _ in batch])
        except BaseException as error:  # the whole call failed: every caller learns why
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


async def gather_outcomes(calls: Sequence[Awaitable[Result]]) -> list[Result | BaseException]:
    """Run a batch's items concurrently, each item's exception kept as its outcome."""
    return list(await asyncio.gather(*calls, return_exceptions=True))
