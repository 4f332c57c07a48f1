"""The ledger writes behind every PaymentIntent transition.

`transition` is the one place a status changes: it checks the state machine, updates the row
under a version check, appends the payment event and writes the outbox events — and, when asked
(`Along`), an earlier payment event, a ledger group and the idempotency key's stored reply — in one
statement: atomic without a transaction, and one round trip on the hot path.

These statements are written for many rows: every parameter is an array (a column of the rows, or
of their events, each event naming its payment). A payment's own write passes one row; the shard's
RowBatcher merges the writes of one shape that queue up into one execution of the statement.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

import asyncpg

from actors.batching import RowBatcher
from actors.ids import new_id
from actors.payments import idempotency
from actors.payments.messages import Idempotency, Reply
from actors.payments.render import charge_object, event_object, payment_intent_object
from actors.payments.states import Action, next_status
from cluster.db import as_columns

# Where a one-statement write may go: a connection (maybe in a transaction), the pool, or the pool
# through a RowBatcher (outside any transaction: batched with other payments' writes of that shape).
Writer: TypeAlias = asyncpg.Connection | asyncpg.Pool | RowBatcher


class VersionConflict(Exception):
    """The row changed under us (another writer); reload and decide again."""


async def load(conn: Writer, payment_id: str, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT p.* FROM unnest($1::text[], $2::text[]) AS x(id, merchant_id) "
                               "JOIN payment_orders p ON p.id = x.id AND p.merchant_id = x.merchant_id",
                               [payment_id], [merchant_id])


@dataclass(frozen=True)
class PaymentEvent:
    """A row of the payment's own history (payment_events)."""

    type: str
    from_status: str | None
    to_status: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Along:
    """What a transition writes in its own statement besides the row, its event and the outbox."""

    earlier: PaymentEvent | None = None  # happened before the transition (e.g. the authorization)
    ledger: Sequence[tuple[str, int]] = ()  # one balanced double-entry group
    ledger_description: str = ""
    finish: tuple[Idempotency, Reply] | None = None  # the key's stored reply (or its deletion)
    recovery: Idempotency | None = None  # the key's recovery point: this payment, now being moved


@dataclass(frozen=True)
class Step:
    """A transition applied to a new row as it is inserted (create-and-confirm): one statement."""

    action: Action
    changes: Mapping[str, Any]
    events: Sequence[str] = ()


async def insert(conn: Writer, values: Mapping[str, Any],
                 recovery_key: Idempotency | None = None, then: Step | None = None,
                 payment_id: str | None = None) -> asyncpg.Record:
    """A new PaymentIntent (with `payment_id`, or a new one), its `created` event and outbox row —
    moved on by `then` with that step's events too, and the idempotency key's recovery point
    recorded, when given — in one statement."""
    payment_id = payment_id or new_id("pi")
    row = {"id": payment_id, "client_secret": f"{payment_id}_secret_{secrets.token_urlsafe(18)}", **values}
    created = {**_DEFAULTS, **row}
    history = [_own_event(created, "payment_intent.created", None, {})]
    events = _event_objects(created, ["payment_intent.created"])
    if then is not None:
        moved = preview(created, then.action, then.changes)
        history.append(_own_event(moved, f"payment_intent.{then.action}", created["status"], {}))
        events += _event_objects(moved, then.events)
        row = {**row, **then.changes, "status": moved["status"]}
    columns = tuple(row)
    args: list[Any] = [[row[c]] for c in columns]
    sql = _insert_sql(columns)
    args += event_and_outbox_args(payment_id, history, events)
    if recovery_key is not None:
        recovery_sql, recovery_args = idempotency.recovery_point_sql(values["merchant_id"], recovery_key,
                                                                     payment_id, len(args) + 1)
        sql += f", k AS ({recovery_sql})"
        args += recovery_args
    record = await conn.fetchrow(sql + " SELECT * FROM p", *args)
    assert record is not None
    return record


def preview(row: Mapping[str, Any], action: Action, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The row as `transition` will leave it (for rendering the reply stored with it)."""
    return {**dict(row), **changes, "status": next_status(row["status"], action)}


async def transition(conn: Writer, row: asyncpg.Record, action: Action,
                     changes: Mapping[str, Any], events: Sequence[str] = (), bank: Mapping[str, Any] | None = None,
                     along: Along = Along()) -> asyncpg.Record:
    """Move `row` by `action` (checked against the state machine), under the version check, with its
    payment event, outbox events and whatever comes `along`: one statement, so all or nothing even
    outside a transaction."""
    check_balanced(row, along.ledger)
    snapshot = preview(row, action, changes)
    changes = {**changes, "status": snapshot["status"]}
    columns = tuple(changes)
    args: list[Any] = [[row["id"]], [row["version"]], *[[changes[c]] for c in columns]]
    history = [_own_event(snapshot, f"payment_intent.{action}", row["status"], bank or {})]
    if along.earlier is not None:
        history.insert(0, along.earlier)
    sql = _update_sql(columns)
    args += event_and_outbox_args(row["id"], history, _event_objects(snapshot, events))
    if along.ledger:
        sql += ledger_sql("u", len(args) + 1)
        args += ledger_args(row["id"], new_id("txn"), along.ledger_description, along.ledger)
    if along.recovery is not None:
        recovery_sql, recovery_args = idempotency.recovery_point_sql(row["merchant_id"], along.recovery, row["id"],
                                                                     len(args) + 1, only_if="u")
        sql += f", r AS ({recovery_sql})"
        args += recovery_args
    if along.finish is not None:
        finish_sql, finish_args = idempotency.finish_sql(row["merchant_id"], *along.finish, len(args) + 1,
                                                         owner=("u", row["id"]))
        sql += f", k AS ({finish_sql})"
        args += finish_args
    record = await conn.fetchrow(sql + " SELECT * FROM u", *args)
    if record is None:
        raise VersionConflict(row["id"])
    return record


# payment_orders' column types: a column of many rows is passed as one array of its type.
COLUMN_TYPES: dict[str, str] = {
    "id": "text", "merchant_id": "text", "amount": "bigint", "currency": "text", "status": "text",
    "capture_method": "text", "payment_method": "text", "description": "text", "statement_descriptor": "text",
    "metadata": "jsonb", "amount_capturable": "bigint", "amount_received": "bigint", "amount_refunded": "bigint",
    "last_payment_error": "jsonb", "latest_charge": "text", "charge": "jsonb", "canceled_at": "bigint",
    "cancellation_reason": "text", "client_secret": "text", "created": "bigint", "bank_phase": "text",
    "auth_stan": "text", "auth_rrn": "text", "auth_transmitted_at": "text", "auth_code": "text",
    "pending_stan": "text", "pending_rrn": "text", "pending_amount": "bigint",
    "processing_since": "timestamp with time zone", "version": "integer", "capture_rrn": "text",
    "captured_at": "timestamp with time zone",
}


# A statement's text depends only on its shape (which columns, which parts come along), so each
# shape's is built once: a checkout's insert and capture took 45 µs of the shard's CPU to prepare
# (arguments and events included) with the texts built each time, 35 µs without.
@lru_cache(maxsize=1024)
def _insert_sql(columns: tuple[str, ...]) -> str:
    """A new row of `columns` (parameters $1…), its event and outbox rows (the parameters after)."""
    return (f"WITH p AS (INSERT INTO payment_orders ({', '.join(columns)}) SELECT * FROM {_unnest(columns, 1)} "
            f"RETURNING *)" + event_and_outbox_sql("p", len(columns) + 1))


@lru_cache(maxsize=1024)
def _update_sql(columns: tuple[str, ...]) -> str:
    """The row ($1) at its version ($2) given `columns` ($3…), its event and outbox rows (after)."""
    sets = ", ".join(f"{c} = x.{c}" for c in columns)
    return (f"WITH u AS (UPDATE payment_orders p SET {sets}, version = p.version + 1 "
            f"FROM {_unnest(('id', 'version', *columns), 1)} WHERE p.id = x.id AND p.version = x.version "
            f"RETURNING p.*)" + event_and_outbox_sql("u", len(columns) + 3))


def _unnest(columns: Sequence[str], first: int) -> str:
    """Rows of payment_orders' `columns` from one array parameter per column, numbered from `first`."""
    arrays = ", ".join(f"${i}::{COLUMN_TYPES[c]}[]" for i, c in enumerate(columns, start=first))
    return f"unnest({arrays}) AS x({', '.join(columns)})"


# Column defaults of payment_orders, for rendering a row before the database has returned it.
_DEFAULTS: dict[str, Any] = {
    "amount_capturable": 0, "amount_received": 0, "amount_refunded": 0, "last_payment_error": None,
    "latest_charge": None, "charge": None, "canceled_at": None, "cancellation_reason": None, "auth_code": None,
}


def _own_event(snapshot: Mapping[str, Any], event_type: str, from_status: str | None,
               data: Mapping[str, Any]) -> PaymentEvent:
    return PaymentEvent(event_type, from_status, snapshot["status"], data)


@lru_cache(maxsize=256)
def event_and_outbox_sql(source: str, first: int) -> str:
    """CTEs appending the payment events and the outbox rows of the rows in `source` (each event
    names its payment), in the order given: one payment's events keep their order end to end."""
    n = first
    return (
        f", e AS (INSERT INTO payment_events (payment_id, merchant_id, type, from_status, to_status, data) "
        f"SELECT s.id, s.merchant_id, h.type, h.from_status, h.to_status, h.data "
        f"FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::jsonb[]) "
        f"WITH ORDINALITY AS h(payment_id, type, from_status, to_status, data, position) "
        f"JOIN {source} s ON s.id = h.payment_id ORDER BY h.position)"
        f", o AS (INSERT INTO outbox_events (id, merchant_id, type, object_id, payload, created) "
        f"SELECT y.id, s.merchant_id, y.type, s.id, y.payload, y.created "
        f"FROM unnest(${n + 5}::text[], ${n + 6}::text[], ${n + 7}::text[], ${n + 8}::json[], ${n + 9}::bigint[]) "
        f"WITH ORDINALITY AS y(payment_id, id, type, payload, created, position) "
        f"JOIN {source} s ON s.id = y.payment_id ORDER BY y.position)"
    )


def event_and_outbox_args(payment_id: str, history: Sequence[PaymentEvent],
                          events: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Arguments for `event_and_outbox_sql`: one payment's history rows and its rendered outbox events."""
    return [[payment_id] * len(history), [h.type for h in history], [h.from_status for h in history],
            [h.to_status for h in history], [dict(h.data) for h in history],
            [payment_id] * len(events), *_outbox_args(events)]


def _event_objects(snapshot: Mapping[str, Any], types: Sequence[str]) -> list[dict[str, Any]]:
    """Events of one snapshot: a `charge.*` event carries the Charge and the others the
    PaymentIntent, as Stripe's do; each object rendered once, shared by its events."""
    rendered: dict[str, dict[str, Any]] = {}

    def subject(event_type: str) -> dict[str, Any]:
        kind = "charge" if event_type.startswith("charge.") else "payment_intent"
        if kind not in rendered:
            rendered[kind] = (charge_object(snapshot) or {}) if kind == "charge" else payment_intent_object(snapshot)
        return rendered[kind]

    return [event_object(t, subject(t)) for t in types]


def _outbox_args(events: Sequence[Mapping[str, Any]]) -> list[Any]:
    return [[e["id"] for e in events], [e["type"] for e in events], list(events), [e["created"] for e in events]]


async def append_outbox(conn: asyncpg.Connection, merchant_id: str, payment_id: str,
                        events: Sequence[Mapping[str, Any]]) -> None:
    """Outbox rows written outside a transition (reviews), in the caller's transaction.
    Keyed by the payment, like its own events: one payment's events stay in order end to end."""
    await conn.execute(
        "INSERT INTO outbox_events (id, merchant_id, type, object_id, payload, created) "
        "SELECT x.id, $1, x.type, $2, x.payload, x.created "
        "FROM unnest($3::text[], $4::text[], $5::json[], $6::bigint[]) AS x(id, type, payload, created)",
        merchant_id, payment_id, *_outbox_args(events))


@lru_cache(maxsize=256)
def ledger_sql(source: str, first: int) -> str:
    """A CTE writing the double-entry groups of the rows in `source` (each entry names its payment)."""
    n = first
    return (f", l AS (INSERT INTO ledger_entries (entry_group, merchant_id, payment_id, account, amount, currency, "
            f"description) SELECT g.entry_group, s.merchant_id, s.id, g.account, g.amount, s.currency, g.description "
            f"FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::bigint[]) "
            f"AS g(payment_id, entry_group, description, account, amount) JOIN {source} s ON s.id = g.payment_id)")


def ledger_args(payment_id: str, group: str, description: str,
                 movements: Sequence[tuple[str, int]]) -> list[list[Any]]:
    count = len(movements)
    return [[payment_id] * count, [group] * count, [description] * count, *as_columns(movements, 2)]


def check_balanced(row: Mapping[str, Any], movements: Sequence[tuple[str, int]]) -> None:
    if sum(amount for _, amount in movements) != 0:
        raise ValueError(f"unbalanced ledger group for {row['id']}: {movements}")


async def append_event(conn: asyncpg.Connection, row: asyncpg.Record, event_type: str, from_status: str | None,
                       data: Mapping[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO payment_events (payment_id, merchant_id, type, from_status, to_status, data) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        row["id"], row["merchant_id"], event_type, from_status, row["status"], dict(data),
    )


class BankIds:
    """Fresh STAN (6 digits) and RRN (12 digits) pairs, one per message to the acquirer, handed out
    from blocks reserved from the ledger's sequence: one round trip per block, not per message.
    Numbers reserved by a process that dies are skipped, never reused (the sequence only grows).

    A refill takes a connection of its own from the pool (nextval ignores transactions anyway), so
    take ids before holding a connection: a holder waiting here while the refill waits for a free
    connection is how a busy shard once deadlocked with every connection idle in a transaction."""

    def __init__(self, pool: asyncpg.Pool, block: int = 256) -> None:
        self.pool, self.block = pool, block
        self.numbers: list[int] = []
        self.lock = asyncio.Lock()

    async def take(self, count: int = 1) -> list[tuple[str, str]]:
        async with self.lock:
            if len(self.numbers) < count:
                rows = await self.pool.fetch(
                    "SELECT nextval('acquirer_message_seq') AS n FROM generate_series(1, $1)", max(self.block, count))
                self.numbers.extend(r["n"] for r in rows)
            taken, self.numbers = self.numbers[:count], self.numbers[count:]
        return [(f"{n % 1_000_000:06d}", f"{n % 10**12:012d}") for n in taken]
