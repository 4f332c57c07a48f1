"""The audit after a run: wait for the system to drain (outbox dispatched, deliveries made, no
payment left in `processing`, the receiver holding every event), load the ledger rows of the
bench's merchants and the bank's journal, and run every check. Any breach fails the run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cluster.bench import checks
from cluster.bench.book import Book
from cluster.bench.checks import Auth, Check, Snapshot

Received = Callable[[bool], dict[str, Any]]  # (summary only?) -> the receiver's stats


@dataclass
class Scope:
    merchant_ids: list[str]
    since: int  # unix seconds: the run's start (objects older than this are not the bench's)
    ledger_dsn: str | None
    bank_journal: str | None


@dataclass
class AuditResult:
    checks: list[Check] = field(default_factory=list)
    drain_s: float = 0.0
    drained: bool = True
    facts: dict[str, Any] = field(default_factory=dict)  # not checks: what the run looked like

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def breached_subjects(self) -> set[str]:
        return {breach.subject for check in self.checks for breach in check.breaches}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "drained": self.drained, "drain_s": round(self.drain_s, 2), "facts": self.facts,
                "checks": [check.to_json() for check in self.checks]}


async def resolve_merchants(dsn: str, payment_ids: list[str]) -> list[str]:
    """With a given API key the merchant id is not known up front: read it off the payments."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT DISTINCT merchant_id FROM payment_orders WHERE id = ANY($1::text[])",
                                payment_ids[:1000])
    finally:
        await conn.close()
    return [row["merchant_id"] for row in rows]


async def _pending_work(conn: asyncpg.Connection, scope: Scope) -> tuple[int, int]:
    """(events not yet dispatched or delivered + payments/refunds in flight, outbox events)."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM outbox_pending p JOIN outbox_events o ON o.id = p.event_id
                WHERE o.merchant_id = ANY($1) AND o.created >= $2)
           + (SELECT count(*) FROM webhook_deliveries WHERE merchant_id = ANY($1) AND status = 'pending'
                AND created_at >= to_timestamp($2))
           + (SELECT count(*) FROM payment_orders WHERE merchant_id = ANY($1) AND created >= $2
                AND status = 'processing')
           + (SELECT count(*) FROM refunds WHERE merchant_id = ANY($1) AND created >= $2 AND status = 'pending')
             AS pending,
           (SELECT count(*) FROM outbox_events WHERE merchant_id = ANY($1) AND created >= $2) AS events""",
        scope.merchant_ids, scope.since)
    return int(row["pending"]), int(row["events"])


async def wait_drained(scope: Scope, received: Received | None, timeout_s: float,
                       say: Callable[[str], None] | None = None) -> tuple[bool, float]:
    """Poll until nothing is in flight and the receiver has as many events as the outbox."""
    assert scope.ledger_dsn
    started = last_said = time.monotonic()
    conn = await asyncpg.connect(scope.ledger_dsn)
    try:
        while True:
            pending, events = await _pending_work(conn, scope)
            have = int(received(True)["unique_events"]) if received else events
            elapsed = time.monotonic() - started
            if pending == 0 and have >= events:
                return True, elapsed
            if elapsed > timeout_s:
                return False, elapsed
            if say and time.monotonic() - last_said >= 5:
                last_said = time.monotonic()
                say(f"  drain {elapsed:5.0f}s: receiver has {have}/{events} events; {pending} events, "
                    f"deliveries, payments or refunds still in flight (timeout {timeout_s:.0f}s)")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def load_snapshot(scope: Scope) -> Snapshot:
    assert scope.ledger_dsn
    conn = await asyncpg.connect(scope.ledger_dsn)
    try:
        args = (scope.merchant_ids, scope.since)
        rows = await conn.fetch(
            "SELECT id, merchant_id, status, amount, amount_received, amount_refunded, auth_rrn FROM payment_orders "
            "WHERE merchant_id = ANY($1) AND created >= $2", *args)
        payments = {row["id"]: dict(row) for row in rows}
        ids = list(payments)
        return Snapshot(
            payments=payments, rrn_to_payment=await _rrn_map(conn, ids, payments),
            refunds=await _refunds(conn, ids), balances=await _balances(conn, ids),
            unbalanced_groups=await _unbalanced(conn, ids), outbox=await _outbox(conn, *args),
            undispatched=await conn.fetchval(
                "SELECT count(*) FROM outbox_pending p JOIN outbox_events o ON o.id = p.event_id "
                "WHERE o.merchant_id = ANY($1) AND o.created >= $2", *args),
            deliveries=await _deliveries(conn, *args),
            auths=_journal(scope),
        )
    finally:
        await conn.close()


async def _rrn_map(conn: asyncpg.Connection, ids: list[str], payments: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every RRN a payment used with the bank: its auth_rrn, and field 37 of each bank answer it logged."""
    mapping = {row["auth_rrn"]: pid for pid, row in payments.items() if row["auth_rrn"]}
    rows = await conn.fetch("SELECT DISTINCT payment_id, data->>'37' AS rrn FROM payment_events "
                            "WHERE payment_id = ANY($1::text[]) AND data ? '37'", ids)
    for row in rows:
        mapping.setdefault(row["rrn"], row["payment_id"])
    return mapping


async def _refunds(conn: asyncpg.Connection, ids: list[str]) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT payment_id, coalesce(sum(amount) FILTER (WHERE status = 'succeeded'), 0) AS succeeded, "
        "count(*) FILTER (WHERE status = 'pending') AS pending FROM refunds WHERE payment_id = ANY($1::text[]) "
        "GROUP BY payment_id", ids)
    return {row["payment_id"]: (int(row["succeeded"]), int(row["pending"])) for row in rows}


async def _balances(conn: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT payment_id, sum(amount) AS total FROM ledger_entries "
                            "WHERE payment_id = ANY($1::text[]) AND account = 'merchant_balance' GROUP BY payment_id",
                            ids)
    return {row["payment_id"]: int(row["total"]) for row in rows}


async def _unbalanced(conn: asyncpg.Connection, ids: list[str]) -> list[tuple[str, str, int]]:
    rows = await conn.fetch("SELECT entry_group, min(payment_id) AS payment_id, currency, sum(amount) AS total "
                            "FROM ledger_entries WHERE payment_id = ANY($1::text[]) "
                            "GROUP BY entry_group, currency HAVING sum(amount) <> 0", ids)
    return [(row["entry_group"], row["payment_id"], int(row["total"])) for row in rows]


async def _deliveries(conn: asyncpg.Connection, merchant_ids: list[str], since: int) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM webhook_deliveries WHERE merchant_id = ANY($1) "
                            "AND created_at >= to_timestamp($2) GROUP BY status", merchant_ids, since)
    return {row["status"]: int(row["n"]) for row in rows}


async def webhook_lag(scope: Scope) -> dict[str, float | None]:
    """Seconds from an event's creation (whole seconds: the outbox keeps no finer time) to its delivery."""
    assert scope.ledger_dsn
    conn = await asyncpg.connect(scope.ledger_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, max(lag) AS max FROM ("
            "  SELECT extract(epoch FROM d.delivered_at - to_timestamp(o.created))::float8 AS lag"
            "  FROM webhook_deliveries d JOIN outbox_events o ON o.id = d.event_id"
            "  WHERE d.merchant_id = ANY($1) AND d.created_at >= to_timestamp($2) AND d.status = 'succeeded') t",
            scope.merchant_ids, scope.since)
    finally:
        await conn.close()
    return {k: None if row[k] is None else round(float(row[k]), 2) for k in ("p50", "p99", "max")}


async def _outbox(conn: asyncpg.Connection, merchant_ids: list[str], since: int) -> dict[str, str]:
    rows = await conn.fetch("SELECT id, object_id FROM outbox_events WHERE merchant_id = ANY($1) AND created >= $2",
                            merchant_ids, since)
    return {row["id"]: row["object_id"] for row in rows}


def _journal(scope: Scope) -> list[Auth] | None:
    if not scope.bank_journal:
        return None
    from banksim.journal import Journal

    journal = Journal(scope.bank_journal)
    try:
        merchants = set(scope.merchant_ids)
        return [Auth(a.rrn, a.state, a.authorized_amount, a.captured_amount, a.refunded_amount)
                for a in journal.authorizations() if a.merchant_id in merchants]
    finally:
        journal.close()


async def audit(scope: Scope, book: Book, received: Received | None, drain_timeout_s: float,
                say: Callable[[str], None] | None = None) -> AuditResult:
    result = AuditResult()
    if not scope.ledger_dsn:
        skipped = Check("ledger", "ledger checks", skipped="no ledger DSN: give --ledger-dsn to audit a remote run")
        result.checks = [checks.idempotency(book), skipped]
        return result
    result.drained, result.drain_s = await wait_drained(scope, received, drain_timeout_s, say)
    snap = await load_snapshot(scope)
    full = received(False) if received else None
    result.facts = {"webhook_lag_s": await webhook_lag(scope), "deliveries": snap.deliveries,
                    "receiver": {k: v for k, v in (full or {}).items() if k != "events"} or None}
    result.checks = [
        checks.client_vs_ledger(book, snap), checks.no_unexpected_payments(book, snap),
        checks.bank_vs_ledger(snap), checks.refunds_within_captures(snap), checks.ledger_balanced(snap),
        checks.no_stuck_payments(snap), checks.outbox_drained(snap), checks.webhooks_received(snap, full),
        checks.idempotency(book),
    ]
    return result
