"""The micro-batchers of actors/batching.py: the one every hot actor hop goes through, and the
RowBatcher the shard writes its hot statements through (against the real ledger)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import asyncpg
import httpx
import pytest

from actors.batching import Batcher, CorkedWriter, RowBatcher
from cluster.db import create_pool
from cluster.stack import StackInfo
from tests.bank import ledger
from tests.conftest import Merchant


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


def test_a_submitted_item_travels_with_the_calls_and_its_future_gets_its_result() -> None:
    async def main() -> None:
        remote = Recorder()
        batcher = Batcher(remote)
        submitted = [batcher.submit(0), batcher.submit(1)]
        assert await batcher.call(2) == 20
        assert remote.batches == [[0, 1, 2]]
        assert submitted[0].result() == 0
        assert isinstance(submitted[1].exception(), ValueError)

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
        batcher = Batcher(remote, max_in_flight=1, min_wait_s=5.0, max_wait_s=5.0)
        first = asyncio.ensure_future(batcher.call(0))
        await asyncio.sleep(0.01)
        later = [asyncio.ensure_future(batcher.call(i)) for i in (2, 4, 6)]
        await asyncio.sleep(0.01)
        assert remote.batches == [[0]]  # the rest wait for the call in flight
        remote.release.set()
        assert await asyncio.gather(first, *later) == [0, 20, 40, 60]
        assert remote.batches == [[0], [2, 4, 6]]

    run(main())


def test_a_stuck_call_holds_the_queue_only_for_the_patience() -> None:
    async def main() -> None:
        stuck = Recorder(hold=True)
        batcher = Batcher(stuck, max_in_flight=1, min_wait_s=0.05, max_wait_s=0.05)
        first = asyncio.ensure_future(batcher.call(0))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.call(2))
        await asyncio.sleep(0.2)
        assert stuck.batches == [[0], [2]]  # sent although the first never answered
        stuck.release.set()
        assert await asyncio.gather(first, queued) == [0, 20]

    run(main())


class StuckOnZero(Recorder):
    """Answers at once, except a batch holding 0, which answers when released."""

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if 0 in items:
            await self.release.wait()
        return [i * 10 for i in items]


def test_a_stuck_call_stops_counting_as_in_flight() -> None:
    async def main() -> None:
        remote = StuckOnZero(hold=True)
        batcher = Batcher(remote, max_in_flight=1, min_wait_s=0.05, max_wait_s=0.05)
        stuck = asyncio.ensure_future(batcher.call(0))
        await asyncio.sleep(0.01)
        assert await asyncio.wait_for(batcher.call(2), timeout=1.0) == 20  # after the patience
        loop = asyncio.get_running_loop()
        asked = loop.time()
        assert await batcher.call(4) == 40
        assert loop.time() - asked < 0.04  # the stuck call no longer holds the queue
        assert remote.batches == [[0], [2], [4]]
        remote.release.set()
        assert await stuck == 0

    run(main())


def test_the_patience_follows_the_round_trip() -> None:
    async def slow(items: list[int]) -> list[int]:
        await asyncio.sleep(0.04)
        return items

    async def main() -> None:
        batcher = Batcher(slow, min_wait_s=0.005, max_wait_s=1.0)
        assert batcher.patience_s == 0.005  # nothing measured yet
        for i in range(60):
            await batcher.call(i)
        assert 0.03 < batcher.round_trip_s < 0.06
        assert 0.06 < batcher.patience_s < 0.12  # twice the round trip
        capped = Batcher(slow, min_wait_s=0.005, max_wait_s=0.02)
        for i in range(30):
            await capped.call(i)
        assert capped.patience_s == 0.02

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


# ---- RowBatcher, against the real ledger PostgreSQL ------------------------------------------

# A statement written for many rows, as RowBatcher wants them: each parameter a column of the rows.
_INSERT = ("INSERT INTO {t} (id, v) SELECT * FROM unnest($1::text[], $2::integer[]) "
           "RETURNING id, v, txid_current() AS xid, statement_timestamp() AS started")


def _with_table(stack_info: StackInfo, body: Callable[[RowBatcher, str], Awaitable[None]]) -> None:
    """Run `body` with a RowBatcher on the ledger and a scratch table (dropped afterwards)."""
    table = f"rowbatch_{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        pool = await create_pool(stack_info.ledger_dsn, min_size=1, max_size=4)
        try:
            await pool.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, v int NOT NULL CHECK (v >= 0), "
                               "version int NOT NULL DEFAULT 0)")
            await body(RowBatcher(pool), table)
        finally:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
            await pool.close()

    asyncio.run(main())


def test_rows_written_together_are_one_statement_and_each_caller_gets_its_row(stack_info: StackInfo) -> None:
    async def body(rows: RowBatcher, table: str) -> None:
        got = [r for r in await asyncio.gather(*[rows.fetchrow(_INSERT.format(t=table), [f"r{i}"], [i])
                                                 for i in range(10)]) if r is not None]
        assert [(r["id"], r["v"]) for r in got] == [(f"r{i}", i) for i in range(10)]
        assert len({r["xid"] for r in got}) == 1  # one round trip, one commit
        assert len({r["started"] for r in got}) == 1  # one execution, not ten pipelined
        assert await rows.pool.fetchval(f"SELECT count(*) FROM {table}") == 10

    _with_table(stack_info, body)


def test_a_statement_that_returns_no_row_answers_none_to_its_caller_only(stack_info: StackInfo) -> None:
    async def body(rows: RowBatcher, table: str) -> None:
        await rows.pool.execute(f"INSERT INTO {table} (id, v) SELECT 'r' || i, i FROM generate_series(0, 5) i")
        update = (f"UPDATE {table} t SET v = t.v + 100, version = t.version + 1 "
                  "FROM unnest($1::text[], $2::integer[]) AS x(id, version) "
                  "WHERE t.id = x.id AND t.version = x.version RETURNING t.id, t.v, txid_current() AS xid")
        got = await asyncio.gather(*[rows.fetchrow(update, [f"r{i}"], [1 if i == 3 else 0]) for i in range(6)])
        assert got[3] is None  # its version check failed
        assert [r["v"] for r in got if r is not None] == [100, 101, 102, 104, 105]
        assert len({r["xid"] for r in got if r is not None}) == 1
        assert await rows.pool.fetchval(f"SELECT v FROM {table} WHERE id = 'r3'") == 3

    _with_table(stack_info, body)


def test_a_rejected_statement_fails_its_caller_alone_and_the_rest_are_written(stack_info: StackInfo) -> None:
    async def body(rows: RowBatcher, table: str) -> None:
        await rows.pool.execute(f"INSERT INTO {table} (id, v) VALUES ('taken', 0)")
        ids = ["a", "taken", "b", "negative", "c"]
        got = await asyncio.gather(*[rows.fetchrow(_INSERT.format(t=table), [i], [-1 if i == "negative" else 1])
                                     for i in ids], return_exceptions=True)
        assert isinstance(got[1], asyncpg.UniqueViolationError)
        assert isinstance(got[3], asyncpg.CheckViolationError)
        assert [r["id"] for r in (got[0], got[2], got[4])] == ["a", "b", "c"]  # type: ignore[index]
        written = await rows.pool.fetch(f"SELECT id, v FROM {table} ORDER BY id")
        assert [(r["id"], r["v"]) for r in written] == [("a", 1), ("b", 1), ("c", 1), ("taken", 0)]

    _with_table(stack_info, body)


def test_one_key_twice_in_a_batch_still_gets_each_its_own_outcome(stack_info: StackInfo) -> None:
    async def body(rows: RowBatcher, table: str) -> None:
        outcomes = await asyncio.gather(*[rows.fetchrow(_INSERT.format(t=table), [key], [v])
                                          for key, v in (("same", 1), ("same", 2), ("other", 3))],
                                        return_exceptions=True)
        assert [r["v"] for r in outcomes if isinstance(r, asyncpg.Record)] == [1, 3]
        assert isinstance(outcomes[1], asyncpg.UniqueViolationError)

    _with_table(stack_info, body)


def test_checkouts_made_together_are_written_in_shared_transactions(stack_info: StackInfo, merchant: Merchant,
                                                                   base_url: str) -> None:
    """The shard writes concurrent create-and-confirms (and their captures) through its RowBatcher:
    payments created in one batch carry the same transaction id (xmin of their first event)."""
    async def pay_all() -> list[str]:
        async with httpx.AsyncClient(base_url=base_url, auth=(merchant.key, ""), timeout=60) as client:
            responses = await asyncio.gather(*[client.post("/v1/payment_intents", data={
                "amount": str(1000 + i), "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
                for i in range(40)])
        assert all(r.status_code == 200 and r.json()["status"] == "succeeded" for r in responses)
        return [r.json()["id"] for r in responses]

    ids = asyncio.run(pay_all())
    events = ledger(stack_info, "SELECT payment_id, type, xmin::text AS xid FROM payment_events "
                                "WHERE payment_id = ANY($1) AND type = 'payment_intent.created'", ids)
    assert len(events) == 40
    assert len({e["xid"] for e in events}) < 40


class SentTransport:
    """Records each send; a real transport behind CorkedWriter is exercised by banksim's and the
    acquirer adapter's tests."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.sends.append(data)

    def is_closing(self) -> bool:
        return self.closing


def test_the_writes_of_one_loop_turn_leave_in_one_send() -> None:
    async def main() -> None:
        transport = SentTransport()
        corked = CorkedWriter(cast(asyncio.WriteTransport, transport))
        corked.write(b"ab")
        corked.write(b"cd")
        assert transport.sends == []
        await asyncio.sleep(0)
        assert transport.sends == [b"abcd"]
        corked.write(b"e")
        await asyncio.sleep(0)
        assert transport.sends == [b"abcd", b"e"]
        transport.closing = True  # closed meanwhile: nothing more is written to it
        corked.write(b"f")
        await asyncio.sleep(0)
        assert transport.sends == [b"abcd", b"e"]

    run(main())
