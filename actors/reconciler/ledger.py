"""The ledger side of a reconciliation: what was booked, what other runs settled, and settling
unknown outcomes from the settlement file.

Unknown outcomes, as the payment pipeline leaves them (see the README, "Reconciliation"):

- A payment in `processing` whose capture message is in doubt (in flight for longer than
  `IN_DOUBT_AFTER_S`, 30 s by default; a call still running is left alone) has the capture's RRN
  in `pending_rrn` (phase `capturing`, or `authorizing` for an automatic capture, whose capture
  ids are persisted with the authorization). If the file settles a capture with that RRN, same
  amount and currency, the bank captured it: the payment is booked `succeeded` exactly as an
  approved capture is (ledger entries, events, outbox), with the bank's transaction time.
- A refund `pending` after a timeout: if the file settles a refund with its RRN, same amount and
  currency, it is booked `succeeded` exactly as an approved refund is.
- Absence from a file proves nothing (the bank may act on a retransmission later), so nothing is
  settled from absence: the recovery sweep keeps retransmitting, and the payment or refund is
  reported in the run's `unresolved` list. An authorization in doubt (phase `authorizing`
  without a settled capture) or a reversal in doubt (`reversing`) never appears in a settlement
  file and is left to the sweep, which reverses it.

Every settlement writes a `reconciliation_resolutions` row. The pipeline's version check keeps a
concurrent sweep from booking the same capture twice (its update fails, it reloads).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from actors.payments.operations import book_capture
from actors.payments.refunds import book_refund
from actors.reconciler.classify import Key, LedgerTxn, PriorSettlement
from actors.reconciler.fileformat import Record, SettlementFile

# A bank call in flight longer than this is in doubt (the pipeline's own recovery sweep waits two
# acquirer timeouts plus 5 s: 25 s with the default 10 s timeout).
IN_DOUBT_AFTER_S = 30.0


@dataclass(frozen=True)
class Resolution:
    kind: str
    rrn: str
    object_id: str
    action: str
    detail: dict[str, Any]


@dataclass
class LedgerView:
    booked: dict[Key, LedgerTxn]
    candidates: list[LedgerTxn]
    unbooked: dict[Key, str]
    unresolved: list[dict[str, Any]]


def _bank_fields(record: Record, file: SettlementFile) -> dict[str, Any]:
    return {"source": "settlement", "file": file.name, "file_sha256": file.sha256, "line": record.line,
            "business_date": file.business_date.isoformat(), "37": record.rrn, "11": record.stan,
            "38": record.auth_code, "39": "00", "4": str(record.amount)}


def _agrees(record: Record, amount: int, currency: str, merchant_id: str) -> bool:
    return (record.amount, record.currency, record.merchant_id) == (amount, currency, merchant_id)


async def resolve_unknown(conn: asyncpg.Connection, file: SettlementFile, records: Sequence[Record],
                          in_doubt_after_s: float = IN_DOUBT_AFTER_S) -> list[Resolution]:
    """Book the captures and refunds in doubt that the file settles (in this transaction).

    In doubt means in flight for longer than `in_doubt_after_s`: a call still running is left to
    the pipeline, which is about to book its answer itself.
    """
    first: dict[Key, Record] = {}
    for record in records:
        first.setdefault((record.type, record.rrn), record)
    capture_rrns = [rrn for kind, rrn in first if kind == "capture"]
    refund_rrns = [rrn for kind, rrn in first if kind == "refund"]
    done: list[Resolution] = []
    payments = await conn.fetch(
        "SELECT * FROM payment_orders WHERE status = 'processing' AND pending_rrn = ANY($1::text[]) "
        "AND bank_phase IN ('capturing', 'authorizing') AND pending_amount IS NOT NULL "
        "AND processing_since < now() - make_interval(secs => $2) ORDER BY id FOR UPDATE",
        capture_rrns, in_doubt_after_s)
    for row in payments:
        record = first[("capture", row["pending_rrn"])]
        if not _agrees(record, row["pending_amount"], row["currency"], row["merchant_id"]):
            continue
        done.append(await _book_capture(conn, row, record, file))
    refunds = await conn.fetch(
        "SELECT * FROM refunds WHERE status = 'pending' AND rrn = ANY($1::text[]) "
        "AND updated_at < now() - make_interval(secs => $2) ORDER BY id FOR UPDATE",
        refund_rrns, in_doubt_after_s)
    for refund in refunds:
        record = first[("refund", refund["rrn"])]
        if not _agrees(record, refund["amount"], refund["currency"], refund["merchant_id"]):
            continue
        done.append(await _book_refund(conn, refund, record, file))
    return done


async def _book_capture(conn: asyncpg.Connection, row: asyncpg.Record, record: Record,
                        file: SettlementFile) -> Resolution:
    """What `Operations._capture_at_bank` books for an approved capture, from the file instead."""
    amount = row["pending_amount"]
    changes: dict[str, Any] = {"capture_rrn": record.rrn, "captured_at": record.transaction_at}
    if row["auth_code"] is None and record.auth_code:
        changes["auth_code"] = record.auth_code
    charge = row["charge"] if isinstance(row["charge"], dict) else json.loads(row["charge"] or "{}")
    if charge.get("status") != "succeeded":
        changes["charge"] = {**charge, "status": "succeeded", "paid": True}
    phase = row["bank_phase"]
    await book_capture(conn, row, changes, _bank_fields(record, file))
    return Resolution("capture", record.rrn, row["id"], "capture_booked",
                      {"amount": amount, "currency": row["currency"], "phase": phase, "line": record.line})


async def _book_refund(conn: asyncpg.Connection, refund: asyncpg.Record, record: Record,
                       file: SettlementFile) -> Resolution:
    """What the refund pipeline books for an approved refund, from the file instead."""
    payment = await conn.fetchrow("SELECT * FROM payment_orders WHERE id = $1 FOR UPDATE", refund["payment_id"])
    booked = await book_refund(conn, refund, payment, _bank_fields(record, file))
    assert booked is not None  # the refund is locked pending, the payment locked at this version
    return Resolution("refund", record.rrn, refund["id"], "refund_booked",
                      {"amount": refund["amount"], "currency": refund["currency"], "payment": refund["payment_id"],
                       "line": record.line})


_CAPTURES = ("SELECT capture_rrn AS rrn, id AS object_id, merchant_id, amount_received AS amount, currency, "
             "captured_at AS booked_at FROM payment_orders")
_REFUNDS = ("SELECT rrn, id AS object_id, merchant_id, amount, currency, updated_at AS booked_at, status "
            "FROM refunds")


def _txn(kind: str, row: asyncpg.Record) -> LedgerTxn:
    return LedgerTxn(kind, row["rrn"], row["object_id"], row["merchant_id"], row["amount"], row["currency"],
                     row["booked_at"])


async def load_ledger(conn: asyncpg.Connection, records: Sequence[Record], start: datetime, end: datetime,
                      merchants: Sequence[str] | None) -> LedgerView:
    """Booked transactions for the file's keys, and those booked in [start, end) for the scope."""
    capture_rrns = list({r.rrn for r in records if r.type == "capture"})
    refund_rrns = list({r.rrn for r in records if r.type == "refund"})
    scope = "AND ($3::text[] IS NULL OR merchant_id = ANY($3::text[]))"
    view = LedgerView({}, [], {}, [])
    for row in await conn.fetch(f"{_CAPTURES} WHERE capture_rrn = ANY($1::text[])", capture_rrns):
        view.booked[("capture", row["rrn"])] = _txn("capture", row)
    for row in await conn.fetch(f"{_REFUNDS} WHERE rrn = ANY($1::text[])", refund_rrns):
        if row["status"] == "succeeded":
            view.booked[("refund", row["rrn"])] = _txn("refund", row)
        else:
            view.unbooked[("refund", row["rrn"])] = f"refund {row['object_id']} is {row['status']} in the ledger"
    for row in await conn.fetch(
            "SELECT id, status, bank_phase, pending_rrn, pending_amount, currency FROM payment_orders "
            "WHERE status = 'processing' AND pending_rrn = ANY($1::text[])", capture_rrns):
        view.unbooked[("capture", row["pending_rrn"])] = (
            f"payment {row['id']} is processing ({row['bank_phase']}) with a capture of {row['pending_amount']} "
            f"{row['currency']} in flight; not booked from the file (it disagrees, or the call is still running)")
    merchant_list = list(merchants) if merchants is not None else None
    for row in await conn.fetch(
            f"{_CAPTURES} WHERE captured_at >= $1 AND captured_at < $2 AND capture_rrn IS NOT NULL {scope}",
            start, end, merchant_list):
        view.candidates.append(_txn("capture", row))
    for row in await conn.fetch(
            f"{_REFUNDS} WHERE status = 'succeeded' AND updated_at >= $1 AND updated_at < $2 {scope}",
            start, end, merchant_list):
        view.candidates.append(_txn("refund", row))
    for row in await conn.fetch(
            "SELECT 'payment' AS kind, id, coalesce(pending_rrn, auth_rrn) AS rrn, "
            "coalesce(pending_amount, amount) AS amount, currency, coalesce(bank_phase, 'processing') AS state, "
            f"merchant_id FROM payment_orders WHERE status = 'processing' {scope.replace('$3', '$1')} "
            "UNION ALL SELECT 'refund', id, rrn, amount, currency, status, merchant_id FROM refunds "
            f"WHERE status = 'pending' {scope.replace('$3', '$1')} ORDER BY 2", merchant_list):
        view.unresolved.append({"type": row["kind"], "object_id": row["id"], "rrn": row["rrn"],
                                "amount": row["amount"], "currency": row["currency"],
                                "merchant_id": row["merchant_id"], "state": row["state"]})
    return view


async def prior_settlements(conn: asyncpg.Connection, scope: str, business_date: date,
                            keys: Sequence[Key]) -> dict[Key, list[PriorSettlement]]:
    """Where the files of other business dates (same scope) carried these keys."""
    result: dict[Key, list[PriorSettlement]] = {}
    if not keys:
        return result
    rows = await conn.fetch(
        "SELECT i.kind, i.rrn, i.line, r.business_date, r.id FROM reconciliation_items i "
        "JOIN reconciliation_runs r ON r.id = i.run_id "
        "WHERE i.rrn = ANY($1::text[]) AND i.line IS NOT NULL AND r.scope = $2 AND r.business_date <> $3 "
        "AND i.classification <> 'duplicate' ORDER BY r.business_date",
        list({rrn for _, rrn in keys}), scope, business_date)
    wanted = set(keys)
    for row in rows:
        key = (row["kind"], row["rrn"])
        if key in wanted:
            result.setdefault(key, []).append(PriorSettlement(row["business_date"], row["id"], row["line"]))
    return result
