"""Helpers for the fraud suites: distinct test cards, payments with risk signals, the decision as the
merchant sees it (`latest_charge.outcome`), and what the bank saw (banksim's journal, by RRN)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from cluster.stack import StackInfo
from tests.bank import ledger
from tests.cards import random_visa

_rng = random.Random()


def visa_number() -> str:
    """A random Luhn-valid Visa number (banksim approves any valid card that is not a test number)."""
    return random_visa(_rng)


def new_card(api: httpx.Client, number: str | None = None) -> dict[str, Any]:
    response = api.post("/v1/payment_methods", data={
        "type": "card", "card[number]": number or visa_number(), "card[exp_month]": "12",
        "card[exp_year]": "2034", "card[cvc]": "123"})
    assert response.status_code == 200, response.text
    return response.json()


def pay_form(payment_method: str, amount: int = 2000, currency: str = "usd",
             risk: Mapping[str, str] | None = None) -> dict[str, str]:
    form = {"amount": str(amount), "currency": currency, "payment_method": payment_method, "confirm": "true"}
    for key, value in (risk or {}).items():
        form[f"risk[{key}]"] = value
    return form


def pay(api: httpx.Client, payment_method: str, amount: int = 2000, currency: str = "usd",
        risk: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Create and confirm; returns the PaymentIntent (from the 402's error for a decline or a block)."""
    response = api.post("/v1/payment_intents", data=pay_form(payment_method, amount, currency, risk))
    return payment_of(response)


def payment_of(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 200:
        body: dict[str, Any] = response.json()
        return body
    assert response.status_code == 402, response.text
    body = response.json()["error"]["payment_intent"]
    return body


def charge(api: httpx.Client, payment_id: str) -> dict[str, Any]:
    """The PaymentIntent's latest charge, expanded (its `outcome` carries the risk decision)."""
    response = api.get(f"/v1/payment_intents/{payment_id}", params={"expand[]": "latest_charge"})
    assert response.status_code == 200, response.text
    latest = response.json()["latest_charge"]
    assert isinstance(latest, dict), latest
    return latest


def outcome(api: httpx.Client, payment_id: str) -> dict[str, Any]:
    result: dict[str, Any] = charge(api, payment_id)["outcome"]
    return result


def is_blocked(payment: Mapping[str, Any]) -> bool:
    error = payment.get("last_payment_error") or {}
    return (payment["status"] == "requires_payment_method" and error.get("code") == "card_declined"
            and error.get("decline_code") == "fraudulent")


# ---- the ledger and the bank -------------------------------------------------------------------


def auth_rrns(stack_info: StackInfo, payment_ids: Iterable[str]) -> dict[str, str]:
    rows = ledger(stack_info, "SELECT id, auth_rrn FROM payment_orders WHERE id = ANY($1)", list(payment_ids))
    return {r["id"]: r["auth_rrn"] for r in rows}


def bank_seen(stack_info: StackInfo, rrns: Iterable[str]) -> dict[str, int]:
    """How many journal rows (authorizations, and answers to any message) banksim has per RRN."""
    rrns = [r for r in rrns if r]
    conn = sqlite3.connect(f"file:{stack_info.bank_journal}?mode=ro", uri=True, timeout=10)
    try:
        marks = ",".join("?" * len(rrns))
        seen: dict[str, int] = dict.fromkeys(rrns, 0)
        for table in ("authorizations", "answers"):
            for (rrn,) in conn.execute(f"SELECT rrn FROM {table} WHERE rrn IN ({marks})", rrns):
                seen[rrn] += 1
        return seen
    finally:
        conn.close()


def bank_authorizations_for(stack_info: StackInfo, merchant_id: str) -> int:
    conn = sqlite3.connect(f"file:{stack_info.bank_journal}?mode=ro", uri=True, timeout=10)
    try:
        (count,) = conn.execute("SELECT count(*) FROM authorizations WHERE merchant_id = ?", (merchant_id,)).fetchone()
        return int(count)
    finally:
        conn.close()

