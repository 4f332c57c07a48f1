"""Shared helpers for the payments suites: read banksim's journal (the external truth) and the
ledger, and check that the two agree for a payment.

Payments are matched to the bank by RRN: `payment_orders.auth_rrn` is the authorization's RRN in
the bank journal. Everything here only reads; nothing writes to the ledger or the journal.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx

from banksim.journal import Authorization, Journal, Operation
from cluster.stack import StackInfo

T = TypeVar("T")

# Test card numbers (banksim/cards.py)
VISA = "4242424242424242"
SLOW_CARD = "4000000000007775"
NEVER_ANSWER_CARD = "4000000000008880"


# ---- ledger ------------------------------------------------------------------------------------

async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def ledger(stack_info: StackInfo, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one read-only query on the ledger database (from a synchronous test)."""
    return [dict(r) for r in asyncio.run(_fetch(stack_info.ledger_dsn, sql, *args))]


def vault(stack_info: StackInfo, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one read-only query on the vault database (from a synchronous test)."""
    return [dict(r) for r in asyncio.run(_fetch(stack_info.vault_dsn, sql, *args))]


def payment_row(stack_info: StackInfo, payment_id: str) -> dict[str, Any]:
    rows = ledger(stack_info, "SELECT * FROM payment_orders WHERE id = $1", payment_id)
    assert rows, f"no payment_orders row for {payment_id}"
    return rows[0]


def merchant_payments(stack_info: StackInfo, merchant_id: str) -> list[dict[str, Any]]:
    return ledger(stack_info, "SELECT * FROM payment_orders WHERE merchant_id = $1 ORDER BY id", merchant_id)


def ledger_entries(stack_info: StackInfo, payment_id: str) -> list[dict[str, Any]]:
    return ledger(stack_info, "SELECT * FROM ledger_entries WHERE payment_id = $1 ORDER BY id", payment_id)


# ---- bank journal ------------------------------------------------------------------------------

@contextmanager
def journal(stack_info: StackInfo) -> Iterator[Journal]:
    """The bank's journal, opened for reading while banksim runs (WAL: no blocking)."""
    opened = Journal(stack_info.bank_journal)
    try:
        yield opened
    finally:
        opened.close()


@dataclass(frozen=True)
class BankView:
    """What the bank knows about one RRN: the authorization (None: never approved) and its operations."""

    authorization: Authorization | None
    operations: list[Operation]

    @property
    def approved(self) -> bool:
        return self.authorization is not None

    @property
    def reversed(self) -> bool:
        return self.authorization is not None and self.authorization.state == "reversed"

    @property
    def captured(self) -> int:
        """Captured and kept (a reversal undoes the capture too)."""
        auth = self.authorization
        return 0 if auth is None or auth.state == "reversed" else auth.captured_amount

    def kinds(self) -> list[str]:
        return [op.kind for op in self.operations]


def bank_view(stack_info: StackInfo, rrn: str | None) -> BankView:
    if rrn is None:
        return BankView(None, [])
    with journal(stack_info) as j:
        auth = j.by_rrn(rrn)
        return BankView(auth, j.operations(rrn) if auth else [])


def merchant_authorizations(stack_info: StackInfo, merchant_id: str) -> list[Authorization]:
    """Every approved authorization the bank holds for this paygate merchant (field 42)."""
    with journal(stack_info) as j:
        return [a for a in j.authorizations() if a.merchant_id == merchant_id]


def reversal_operations(stack_info: StackInfo, rrn: str) -> list[Operation]:
    with journal(stack_info) as j:
        return [op for op in j.operations(rrn) if op.kind == "reversal"]


def bank_answers(stack_info: StackInfo, rrn: str) -> dict[str, dict[str, Any]]:
    """Every answer the bank decided for an RRN, by MTI (e.g. "0110", "0410"), silent ones included."""
    db = sqlite3.connect(f"file:{stack_info.bank_journal}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        rows = db.execute("SELECT mti, fields, silent FROM answers WHERE rrn = ?", (rrn,)).fetchall()
    finally:
        db.close()
    return {mti: {"fields": json.loads(fields), "silent": bool(silent)} for mti, fields, silent in rows}


# ---- the agreement between them ------------------------------------------------------------------

def assert_bank_matches_ledger(stack_info: StackInfo, payment_id: str) -> tuple[dict[str, Any], BankView]:
    """The ledger row, the ledger entries and the bank's journal tell the same story for a payment.

    - captured-and-kept at the bank == amount_received in the ledger;
    - the ledger entries sum to zero and their acquirer_receivable side == amount_received;
    - funds are held at the bank (authorized, not captured, not reversed) iff the ledger says
      requires_capture with amount_capturable == the authorized amount;
    - a payment that is not succeeded/requires_capture holds nothing at the bank.
    """
    row = payment_row(stack_info, payment_id)
    bank = bank_view(stack_info, row["auth_rrn"])
    entries = ledger_entries(stack_info, payment_id)
    assert sum(e["amount"] for e in entries) == 0, f"ledger entries of {payment_id} do not balance: {entries}"
    receivable = sum(e["amount"] for e in entries if e["account"] == "acquirer_receivable")
    assert receivable == row["amount_received"], (payment_id, receivable, row["amount_received"], entries)
    assert bank.captured == row["amount_received"], (
        f"{payment_id}: bank captured {bank.captured} ({bank.authorization}) but ledger amount_received "
        f"{row['amount_received']} (status {row['status']})")
    auth = bank.authorization
    held = auth is not None and auth.state == "authorized"
    if row["status"] == "requires_capture":
        assert held and auth is not None and auth.authorized_amount == row["amount_capturable"] == row["amount"], (
            payment_id, row["status"], row["amount_capturable"], auth)
    else:
        assert not held, f"{payment_id} is {row['status']} but the bank still holds {auth}"
    if row["status"] == "succeeded":
        assert auth is not None and auth.state == "captured" and auth.authorized_amount == row["amount"]
        assert bank.kinds().count("capture") == 1, bank.operations
    if row["status"] in ("requires_payment_method", "canceled", "requires_confirmation"):
        assert row["amount_received"] == 0 and row["amount_capturable"] == 0, row
    return row, bank


# ---- HTTP helpers ------------------------------------------------------------------------------

def tokenize(api: httpx.Client, number: str, exp_year: int = 2034, cvc: str = "123") -> str:
    response = api.post("/v1/payment_methods", data={
        "type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": str(exp_year),
        "card[cvc]": cvc})
    assert response.status_code == 200, response.text
    pm = response.json()
    assert pm["id"].startswith("pm_") and number not in response.text
    return str(pm["id"])


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, response.text
    return dict(body["error"])


def wait_until(check: Callable[[], T], timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with the last value after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value {last!r}")
        time.sleep(interval_s)
