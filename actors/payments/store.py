"""The ledger writes behind every PaymentIntent transition.

`transition` is the one place a status changes: it checks the state machine, updates the row
under a version check, appends the payment event and writes the outbox events, all on the
caller's connection so they commit in the caller's transaction.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from actors.ids import new_id
from actors.payments.render import event_object, payment_intent_object
from actors.payments.states import Action, next_status


class VersionConflict(Exception):
    """The row changed under us (another writer); reload and decide again."""


async def load(conn: asyncpg.Connection | asyncpg.Pool, payment_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM payment_orders WHERE id = $1 AND merchant_id = $2",
                               payment_id, merchant_id)


async def insert(conn: asyncpg.Connection, values: Mapping[str, Any]) -> asyncpg.Record:
    """A new PaymentIntent, its `created` event and outbox row: one statement."""
    payment_id = new_id("pi")
    row = {"id": payment_id, "client_secret": f"{payment_id}_secret_{secrets.token_urlsafe(18)}", **values}
    columns = list(row)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    snapshot = {**_DEFAULTS, **row}
    record = await conn.fetchrow(
        f"WITH p AS (INSERT INTO payment_orders ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *)"
        + _event_and_outbox_sql("p", len(columns) + 1) + " SELECT * FROM p",
        *[row[c] for c in columns], *_event_and_outbox_args(snapshot, "payment_intent.created", None, {},
                                                            ["payment_intent.created"]),
    )
    assert record is not None
    return record


async def transition(conn: asyncpg.Connection, row: asyncpg.Record, action: Action, changes: Mapping[str, Any],
                     events: Sequence[str] = (), bank: Mapping[str, Any] | None = None) -> asyncpg.Record:
    """Move `row` by `action` (checked against the state machine), under the version check, with its
    payment event and outbox events: one statement, so all or nothing even outside a transaction."""
    status = next_status(row["status"], action)
    changes = {**changes, "status": status}
    columns = list(changes)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
    snapshot = {**dict(row), **changes}
    record = await conn.fetchrow(
        f"WITH u AS (UPDATE payment_orders SET {sets}, version = version + 1 "
        f"WHERE id = $1 AND version = $2 RETURNING *)" + _event_and_outbox_sql("u", len(columns) + 3)
        + " SELECT * FROM u",
        row["id"], row["version"], *[changes[c] for c in columns],
        *_event_and_outbox_args(snapshot, f"payment_intent.{action}", row["status"], dict(bank or {}), events),
    )
    if record is None:
        raise VersionConflict(row["id"])
    return record


# Column defaults of payment_orders, for rendering a row before the database has returned it.
_DEFAULTS: dict[str, Any] = {
    "amount_capturable": 0, "amount_received": 0, "amount_refunded": 0, "last_payment_error": None,
    "latest_charge": None, "charge": None, "canceled_at": None, "cancellation_reason": None, "auth_code": None,
}


def _event_and_outbox_sql(source: str, first: int) -> str:
    """CTEs appending the payment event and the outbox rows for the row in `source`."""
    n = first
    return (
        f", e AS (INSERT INTO payment_events (payment_id, merchant_id, type, from_status, to_status, data) "
        f"SELECT id, merchant_id, ${n}, ${n + 1}, status, ${n + 2} FROM {source})"
        f", o AS (INSERT INTO outbox_events (id, merchant_id, type, object_id, payload, created) "
        f"SELECT x.id, s.merchant_id, x.type, s.id, x.payload, x.created FROM {source} s, "
        f"unnest(${n + 3}::text[], ${n + 4}::text[], ${n + 5}::jsonb[], ${n + 6}::bigint[]) "
        f"AS x(id, type, payload, created))"
    )


def _event_and_outbox_args(snapshot: Mapping[str, Any], event_type: str, from_status: str | None,
                           data: Mapping[str, Any], outbox_types: Sequence[str]) -> list[Any]:
    obj = payment_intent_object(snapshot)
    events = [event_object(t, obj) for t in outbox_types]
    return [event_type, from_status, dict(data), [e["id"] for e in events], [e["type"] for e in events],
            events, [e["created"] for e in events]]


async def append_event(conn: asyncpg.Connection, row: asyncpg.Record, event_type: str, from_status: str | None,
                       data: Mapping[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO payment_events (payment_id, merchant_id, type, from_status, to_status, data) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        row["id"], row["merchant_id"], event_type, from_status, row["status"], dict(data),
    )


async def write_ledger(conn: asyncpg.Connection, row: asyncpg.Record, movements: Sequence[tuple[str, int]],
                       description: str) -> None:
    """One double-entry group: the amounts must sum to zero."""
    if sum(amount for _, amount in movements) != 0:
        raise ValueError(f"unbalanced ledger group for {row['id']}: {movements}")
    group = new_id("txn")
    await conn.executemany(
        "INSERT INTO ledger_entries (entry_group, merchant_id, payment_id, account, amount, currency, description) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(group, row["merchant_id"], row["id"], account, amount, row["currency"], description)
         for account, amount in movements],
    )


class BankIds:
    """Fresh STAN (6 digits) and RRN (12 digits) pairs, one per message to the acquirer, handed out
    from blocks reserved from the ledger's sequence: one round trip per block, not per message.
    Numbers reserved by a process that dies are skipped, never reused (the sequence only grows)."""

    def __init__(self, block: int = 256) -> None:
        self.block = block
        self.numbers: list[int] = []
        self.lock = asyncio.Lock()

    async def take(self, conn: asyncpg.Connection | asyncpg.Pool, count: int = 1) -> list[tuple[str, str]]:
        async with self.lock:
            if len(self.numbers) < count:
                rows = await conn.fetch("SELECT nextval('acquirer_message_seq') AS n FROM generate_series(1, $1)",
                                        max(self.block, count))
                self.numbers.extend(r["n"] for r in rows)
            taken, self.numbers = self.numbers[:count], self.numbers[count:]
        return [(f"{n % 1_000_000:06d}", f"{n % 10**12:012d}") for n in taken]
