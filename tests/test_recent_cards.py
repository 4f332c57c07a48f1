"""The gateway's memory of the cards it has just tokenized: what it keeps (card facts only, per
merchant, for a while), and, on the real stack, that the payment which follows a tokenization
reaches its shard without a vault lookup while any other payment method still goes to the vault."""

from __future__ import annotations

from typing import Any

import httpx
import ray

from actors.registry import CARD_VAULT
from gateway.recent_cards import RecentCards
from tests.bank import tokenize
from tests.fraud_support import charge, pay, pay_form

VISA = "4242424242424242"


def _payment_method(pm_id: str = "pm_1") -> dict[str, Any]:
    return {"id": pm_id, "object": "payment_method", "type": "card",
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034, "funding": "credit",
                     "country": "US", "fingerprint": "fp1", "checks": {"cvc_check": "unchecked"}},
            "billing_details": {"email": "a@example.com"}, "metadata": {"order": "7"}}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keeps_only_the_card_facts_that_cannot_change() -> None:
    cards = RecentCards()
    cards.remember("acct_a", _payment_method())
    assert cards.recall("acct_a", "pm_1") == {
        "id": "pm_1", "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034,
                               "fingerprint": "fp1", "funding": "credit", "country": "US"}}


def test_one_merchants_card_is_not_anothers() -> None:
    cards = RecentCards()
    cards.remember("acct_a", _payment_method())
    assert cards.recall("acct_b", "pm_1") is None
    assert cards.recall("acct_a", "pm_2") is None and cards.recall("acct_a", None) is None


def test_entries_age_out_and_the_oldest_go_first_when_full() -> None:
    clock = _Clock()
    cards = RecentCards(max_entries=2, ttl_s=60, clock=clock)
    cards.remember("acct_a", _payment_method("pm_1"))
    clock.now = 30
    cards.remember("acct_a", _payment_method("pm_2"))
    clock.now = 61
    assert cards.recall("acct_a", "pm_1") is None and len(cards) == 1
    assert cards.recall("acct_a", "pm_2") is not None
    cards.remember("acct_a", _payment_method("pm_3"))
    cards.remember("acct_a", _payment_method("pm_4"))
    assert [cards.recall("acct_a", pm) is not None for pm in ("pm_2", "pm_3", "pm_4")] == [False, True, True]


def test_ignores_what_is_not_a_card_payment_method() -> None:
    cards = RecentCards()
    cards.remember("acct_a", {"id": "pm_1", "type": "sepa_debit"})
    cards.remember("acct_a", {"card": {"brand": "visa"}})
    assert len(cards) == 0


def _vault_lookups() -> int:
    vault = ray.get_actor(CARD_VAULT, namespace="paygate")
    return int(ray.get(vault.stats.remote(), timeout=30)["looked_up"])


def test_a_just_tokenized_card_is_paid_without_a_vault_lookup(api: httpx.Client) -> None:
    pm_id = tokenize(api, VISA)
    fingerprint = api.get(f"/v1/payment_methods/{pm_id}").json()["card"]["fingerprint"]
    before = _vault_lookups()
    pi = pay(api, pm_id)
    assert pi["status"] == "succeeded" and pi["payment_method"] == pm_id
    assert _vault_lookups() == before
    card = charge(api, pi["id"])["payment_method_details"]["card"]
    assert (card["brand"], card["last4"], card["fingerprint"]) == ("visa", "4242", fingerprint)


def test_other_payment_methods_are_still_looked_up_in_the_vault(api: httpx.Client, admin: httpx.Client,
                                                                  base_url: str) -> None:
    before = _vault_lookups()
    assert pay(api, "pm_card_visa")["status"] == "succeeded"  # a test alias: resolved by the vault
    assert _vault_lookups() == before + 1
    created = admin.post("/v1/admin/merchants", data={"name": "another merchant"})
    assert created.status_code == 200, created.text
    with httpx.Client(base_url=base_url, auth=(created.json()["secret_key"], ""), timeout=60) as other:
        theirs = tokenize(other, VISA)  # remembered by this gateway, but for the other merchant
    response = api.post("/v1/payment_intents", data=pay_form(theirs))
    assert response.status_code == 400 and response.json()["error"]["code"] == "resource_missing", response.text
