"""The ledger writes behind every PaymentIntent transition.

`transition` is the one place a status changes: it checks the state machine, updates the row
under a version check, appends the payment event and writes the outbox events, all on the
caller's connection so they commit in the caller's transaction.
"""

from __future__ import annotations

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
    payment_id = new_id("pi")
    row = {"id": payment_id, "client_secret": f"{payment_id}_secret_{secrets.token_urlsafe(18)}", **values}
    columns = list(row)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    record = await conn.fetchrow(
        f"INSERT INTO payment_orders ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *",
        *[row[c] for c in columns],
    )
    assert record is not None
    await append_event(conn, record, "payment_intent.created", None, {})
    await write_outbox(conn, record, ["payment_intent.created"])
    return record


async def transition(conn: asyncpg.Connection, row: asyncpg.Record, action: Action, changes: Mapping[str, Any],
                     events: Sequence[str] = (), bank: Mapping[str, Any] | None = None) -> asyncpg.Record:
    status = next_status(row["status"], action)
    updated = await update(conn, row, {**changes, "status": status})
    await append_event(conn, updated, f"payment_intent.{action}", row["status"], dict(bank or {}))
    await write_outbox(conn, updated, events)
    return updated


async def update(conn: asyncpg.Connection, row: asyncpg.Record, changes: Mapping[str, Any]) -> asyncpg.Record:
    """Update under the version check: a concurrent writer makes this raise, never overwrite."""
    columns = list(changes)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
    record = await conn.fetchrow(
        f"UPDATE payment_orders SET {sets}, version = version + 1 WHERE id = $1 AND version = $2 RETURNING *",
        row["id"], row["version"], *[changes[c] for c in columns],
    )
    if record is None:
        raise VersionConflict(row["id"])
    return record


async def append_event(conn: asyncpg.Connection, row: asyncpg.Record, event_type: str, from_status: str | None,
                       data: Mapping[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO payment_events (payment_id, merchant_id, type, from_status, to_status, data) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        row["id"], row["merchant_id"], event_type, from_status, row["status"], dict(data),
    )


async def write_outbox(conn: asyncpg.Connection, row: asyncpg.Record, event_types: Sequence[str]) -> None:
    if not event_types:
        return
    snapshot = payment_intent_object(row)
    events = [event_object(t, snapshot) for t in event_types]
    await conn.executemany(
        "INSERT INTO outbox_events (id, merchant_id, type, object_id, payload, created) VALUES ($1, $2, $3, $4, $5, $6)",
        [(e["id"], row["merchant_id"], e["type"], row["id"], e, e["created"]) for e in events],
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


async def next_bank_ids(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[str, str]:
    """A fresh STAN (6 digits) and RRN (12 digits) for one message to the acquirer."""
    number = await conn.fetchval("SELECT nextval('acquirer_message_seq')")
    return f"{number % 1_000_000:06d}", f"{number % 10**12:012d}"
