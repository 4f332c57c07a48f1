"""Micro-batching for hot actor calls: callers await one item each; the batcher sends what has
queued up in one call and hands each caller its own result (or its own exception). A Ray call
costs about as much as the work it carries here, so every hot hop (gateway → shard, shard → link,
link → vault) goes through one of these.

Self-clocking: while fewer than `max_in_flight` calls are out, a batch leaves at the end of the
current event-loop turn (so requests that arrived together travel together, and an idle hop adds
no delay); otherwise items queue until a call returns. Under load, batches grow by themselves. One
call in flight by default: at saturation that carried 6-9% more payments/s than two (three paired
bench runs), because each call then carries what arrived during the whole previous round trip.

So that one stuck call (a slow bank answer holds its whole batch) cannot hold the queue, a call
out for longer than twice the hop's recent round trip (kept within [`min_wait_s`, `max_wait_s`])
is taken for stuck and stops counting as in flight. The patience follows the round trip because
under load round trips grow: a fixed 5 ms patience ran out on nearly every call at 150 payments/s
(the gateway's hop to the shard sent 2.6 items a call instead of one call a round trip), and the
extra calls cost more CPU than the work they carried.

`RowBatcher` does the same for hot SQL statements written for many rows: one execution, one round
trip and one commit per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(self, send: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
                 max_items: int = 128, max_in_flight: int = 1, min_wait_s: float = 0.005,
                 max_wait_s: float = 1.0) -> None:
        self.send = send
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.min_wait_s, self.max_wait_s = min_wait_s, max_wait_s
        self.round_trip_s = 0.0  # moving average of the calls that returned
        self.pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self.out: list[float] = []  # when each call in flight left
        self.sending: set[asyncio.Task[None]] = set()
        self.soon: asyncio.Handle | None = None  # a flush at the end of this loop turn
        self.timer: asyncio.TimerHandle | None = None  # a flush when the oldest call counts as stuck

    async def call(self, item: Item) -> Result:
        return await self.submit(item)

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """`call` for a caller that does not wait for the answer: the item's future, to watch."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if not self.pending or self.soon is not None:
            return
        loop, patience = asyncio.get_running_loop(), self.patience_s
        in_flight = sorted(left for left in self.out if left > loop.time() - patience)
        if len(in_flight) < self.max_in_flight or len(self.pending) >= self.max_items:
            self.soon = loop.call_soon(self._flush)
        elif self.timer is None:
            self.timer = loop.call_at(in_flight[-self.max_in_flight] + patience, self._flush)

    @property
    def patience_s(self) -> float:
        """How long queued items wait for a call in flight before they go without it."""
        return min(self.max_wait_s, max(self.min_wait_s, 2 * self.round_trip_s))

    def _flush(self) -> None:
        for handle in (self.soon, self.timer):
            if handle is not None:
                handle.cancel()
        self.soon = self.timer = None
        batch, self.pending = self.pending[: self.max_items], self.pending[self.max_items:]
        if batch:
            loop = asyncio.get_running_loop()
            self.out.append(loop.time())
            task = loop.create_task(self._send(batch, self.out[-1]))
            self.sending.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self.sending.discard)
        self._schedule()

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]], left: float) -> None:
        try:
            results = await self.send([item for item, _ in batch])
            # A stuck call counts as no longer than the patience, so one outlier cannot inflate it.
            took = asyncio.get_running_loop().time() - left
            self.round_trip_s += (min(took, self.patience_s) - self.round_trip_s) / 8
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} was answered with {len(results)} results")
        except BaseException as error:  # the whole call failed: every caller learns why
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self.out.remove(left)
            self._schedule()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class CorkedWriter:
    """Writes made in one event-loop turn leave in one send. On this VM a send on a loopback socket
    also runs the receiver's side of TCP in the sender, so a pipelined protocol writing a small
    frame per message (banksim's answers, the acquirer link's requests: tens per turn under load)
    paid that once per frame: a quarter of banksim's CPU was `StreamWriter.write`."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        if not self.transport.is_closing():  # closed meanwhile: lost with the connection, as if sent
            self.transport.write(data)


async def gather_outcomes(calls: Sequence[Awaitable[Result]]) -> list[Result | BaseException]:
    """Run a batch's items concurrently, each item's exception kept as its outcome."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


class RowBatcher:
    """Statements written for many rows go to PostgreSQL together: every parameter of such a
    statement is an array (a column of its rows, or of their children, each naming its row), so
    the calls of one statement text that queue up while the previous batch is out are merged into
    one execution, their arrays joined parameter by parameter: one round trip, one commit and one
    pass of the executor for the batch. Measured on this machine with the shard's capture statement
    (five tables), PostgreSQL's CPU per row: 91-109 µs merged against 197-200 µs pipelined as
    single-row statements (asyncpg's `fetchmany`, this class's earlier form) at 64 rows a batch,
    184-238 against 247-294 µs at 8 rows. Batches reach the cap only at saturation, where 128 rows
    carried 4-12% more payments/s than 64 (four alternating pairs at rate 1,000).

    A call's first parameter must hold exactly the `key` of the one row it returns (or would have
    returned: no row is an answer too, e.g. a version check that failed). The statement is all or
    nothing: a batch PostgreSQL rejects runs again call by call, so each caller gets its own
    outcome; a batch that names one key twice (its rows could not be told apart) runs call by call
    in the order the calls were made. A connection lost mid-batch fails every caller of that
    batch, as it would have failed each alone."""

    def __init__(self, pool: asyncpg.Pool, key: str = "id", max_items: int = 128, max_in_flight: int = 1) -> None:
        self.pool, self.key = pool, key
        self.max_items, self.max_in_flight = max_items, max_in_flight
        self.batchers: dict[str, Batcher[tuple[list[Any], ...], asyncpg.Record | None]] = {}

    async def fetchrow(self, sql: str, *args: list[Any]) -> asyncpg.Record | None:
        batcher = self.batchers.get(sql)
        if batcher is None:
            batcher = self.batchers[sql] = Batcher(lambda batch: self._run(sql, batch), self.max_items,
                                                   self.max_in_flight)
        return await batcher.call(args)

    async def _run(self, sql: str, batch: list[tuple[list[Any], ...]]) -> list[asyncpg.Record | BaseException | None]:
        keys = [args[0][0] for args in batch]
        if len(set(keys)) < len(batch):  # one key twice: its rows could not be told apart
            return await self._in_call_order(sql, batch)
        if len(batch) == 1:
            return await self._one_by_one(sql, batch)
        merged = [[value for column in columns for value in column] for columns in zip(*batch, strict=True)]
        try:
            rows = await self.pool.fetch(sql, *merged)
        except asyncpg.PostgresError:
            return await self._one_by_one(sql, batch)
        by_key = {row[self.key]: row for row in rows}
        return [by_key.get(key) for key in keys]

    async def _one_by_one(self, sql: str,
                          batch: list[tuple[list[Any], ...]]) -> list[asyncpg.Record | BaseException | None]:
        return await gather_outcomes([self.pool.fetchrow(sql, *args) for args in batch])

    async def _in_call_order(self, sql: str,
                             batch: list[tuple[list[Any], ...]]) -> list[asyncpg.Record | BaseException | None]:
        """Each call after the one before it: two calls on one row get their outcomes in the order made."""
        outcomes: list[asyncpg.Record | BaseException | None] = []
        for args in batch:
            outcomes += await self._one_by_one(sql, [args])
        return outcomes
