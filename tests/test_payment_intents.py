"""PaymentIntents against the real stack: every Stripe test card, the capture/cancel lifecycle with
banksim's journal checked against the ledger after each step, the state machine's refusals,
validation, retrieve/list, another merchant's ids, and a bank that never answers (which must not
hold up the payments queued behind it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from cluster.stack import StackInfo
from tests.bank import (
    NEVER_ANSWER_CARD,
    SLOW_CARD,
    assert_bank_matches_ledger,
    bank_answers,
    bank_view,
    error_of,
    ledger,
    ledger_entries,
    merchant_authorizations,
    merchant_payments,
    payment_row,
    tokenize,
)
from tests.conftest import Merchant

PI_FIELDS = {"id", "object", "amount", "amount_capturable", "amount_received", "currency", "status",
             "capture_method", "payment_method", "created", "livemode", "metadata", "description",
             "last_payment_error", "latest_charge", "canceled_at", "cancellation_reason", "client_secret"}


def _create(api: httpx.Client, **params: Any) -> httpx.Response:
    body = {"amount": "2000", "currency": "usd", **{k: str(v) for k, v in params.items()}}
    return api.post("/v1/payment_intents", data=body)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def _authorized(api: httpx.Client, amount: int = 5000, **params: Any) -> dict[str, Any]:
    pi = _ok(_create(api, amount=amount, payment_method="pm_card_visa", confirm="true", capture_method="manual",
                     **params))
    assert (pi["status"], pi["amount_capturable"], pi["amount_received"]) == ("requires_capture", amount, 0)
    return pi


@pytest.fixture
def other_api(admin: httpx.Client, base_url: str) -> Iterator[httpx.Client]:
    """A second merchant, for isolation checks."""
    response = admin.post("/v1/admin/merchants", data={"name": "the other merchant"})
    assert response.status_code == 200, response.text
    with httpx.Client(base_url=base_url, auth=(response.json()["secret_key"], ""), timeout=60) as client:
        yield client


# ---- 1. every test card --------------------------------------------------------------------------

DECLINES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
    ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
]


@pytest.mark.parametrize("pm", ["pm_card_visa", "pm_card_mastercard"])
def test_approving_card_succeeds_and_bank_agrees(api: httpx.Client, stack_info: StackInfo, pm: str) -> None:
    response = _create(api, amount=1999, payment_method=pm, confirm="true")
    pi = _ok(response)
    assert set(pi) >= PI_FIELDS, PI_FIELDS - set(pi)
    assert pi["object"] == "payment_intent" and pi["id"].startswith("pi_")
    assert (pi["status"], pi["amount"], pi["amount_received"], pi["amount_capturable"]) == ("succeeded", 1999, 1999, 0)
    assert pi["capture_method"] == "automatic" and pi["livemode"] is False
    assert pi["last_payment_error"] is None and pi["latest_charge"].startswith("ch_")
    assert pi["payment_method"].startswith("pm_") and pi["client_secret"].startswith(pi["id"] + "_secret_")
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.authorization is not None and bank.authorization.authorized_amount == 1999
    assert bank.authorization.currency == "usd"


@pytest.mark.parametrize(("pm", "code", "decline_code"), DECLINES, ids=[d[2] for d in DECLINES])
def test_declining_card_gives_stripes_error(api: httpx.Client, stack_info: StackInfo, merchant: Merchant,
                                            pm: str, code: str, decline_code: str) -> None:
    response = _create(api, amount=2500, payment_method=pm, confirm="true")
    assert response.status_code == 402, response.text
    error = error_of(response)
    assert (error["type"], error["code"], error["decline_code"]) == ("card_error", code, decline_code)
    assert error["message"] and error["charge"].startswith("ch_")
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert error["payment_intent"]["last_payment_error"]["decline_code"] == decline_code
    pi_id = error["payment_intent"]["id"]

    pi = _ok(api.get(f"/v1/payment_intents/{pi_id}"))
    assert pi["status"] == "requires_payment_method"
    assert (pi["amount_received"], pi["amount_capturable"]) == (0, 0)
    last = pi["last_payment_error"]
    assert (last["type"], last["code"], last["decline_code"]) == ("card_error", code, decline_code)
    # The bank was asked (an RRN was used) and approved nothing.
    row = payment_row(stack_info, pi_id)
    assert row["auth_rrn"] is not None
    assert bank_view(stack_info, row["auth_rrn"]).authorization is None
    assert merchant_authorizations(stack_info, merchant.id) == []
    assert ledger_entries(stack_info, pi_id) == []


def test_declined_raw_card_number_and_retry_with_a_good_card(api: httpx.Client, stack_info: StackInfo) -> None:
    """A tokenized Stripe decline number declines like its pm_card_ alias; confirming the same intent again
    with a good card then succeeds (requires_payment_method is not terminal)."""
    lost = tokenize(api, "4000000000009987")
    response = _create(api, amount=3000, payment_method=lost, confirm="true")
    assert response.status_code == 402, response.text
    error = error_of(response)
    assert (error["code"], error["decline_code"]) == ("card_declined", "lost_card")
    pi_id = error["payment_intent"]["id"]
    first_rrn = payment_row(stack_info, pi_id)["auth_rrn"]

    good = tokenize(api, "4242424242424242")
    pi = _ok(api.post(f"/v1/payment_intents/{pi_id}/confirm", data={"payment_method": good}))
    assert (pi["status"], pi["amount_received"], pi["payment_method"]) == ("succeeded", 3000, good)
    assert pi["last_payment_error"] is None
    row, bank = assert_bank_matches_ledger(stack_info, pi_id)
    assert row["auth_rrn"] != first_rrn and bank.authorization is not None


# ---- 2. lifecycle, bank journal vs ledger after each step ------------------------------------------

def test_manual_capture_full(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _authorized(api, 5000)
    row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert row["amount_capturable"] == 5000 and row["auth_code"]
    assert bank.authorization is not None and bank.authorization.state == "authorized"
    assert bank.authorization.auth_code == row["auth_code"]
    assert ledger_entries(stack_info, pi["id"]) == []

    captured = _ok(api.post(f"/v1/payment_intents/{pi['id']}/capture"))
    assert (captured["status"], captured["amount_received"], captured["amount_capturable"]) == ("succeeded", 5000, 0)
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.captured == 5000 and bank.kinds() == ["capture"]
    entries = {e["account"]: e["amount"] for e in ledger_entries(stack_info, pi["id"])}
    assert entries == {"acquirer_receivable": 5000, "merchant_balance": -5000}


def test_partial_capture_releases_the_remainder(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _authorized(api, 5000)
    captured = _ok(api.post(f"/v1/payment_intents/{pi['id']}/capture", data={"amount_to_capture": "3250"}))
    assert (captured["status"], captured["amount"], captured["amount_received"], captured["amount_capturable"]) == (
        "succeeded", 5000, 3250, 0)
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.authorization is not None and bank.authorization.captured_amount == 3250
    assert [op.amount for op in bank.operations] == [3250]
    assert _ok(api.get(f"/v1/payment_intents/{pi['id']}"))["amount_received"] == 3250
    # Nothing more can be captured: the remainder is gone.
    again = api.post(f"/v1/payment_intents/{pi['id']}/capture", data={"amount_to_capture": "100"})
    assert again.status_code == 400 and error_of(again)["code"] == "payment_intent_unexpected_state"


def test_cancel_with_reversal_nets_to_zero(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _authorized(api, 4200)
    canceled = _ok(api.post(f"/v1/payment_intents/{pi['id']}/cancel",
                            data={"cancellation_reason": "requested_by_customer"}))
    assert canceled["status"] == "canceled"
    assert canceled["cancellation_reason"] == "requested_by_customer"
    assert isinstance(canceled["canceled_at"], int) and abs(canceled["canceled_at"] - time.time()) < 60
    assert (canceled["amount_capturable"], canceled["amount_received"]) == (0, 0)
    row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.reversed and bank.kinds() == ["reversal"] and bank.captured == 0
    assert ledger_entries(stack_info, pi["id"]) == []
    # Canceling again is an illegal transition, not a second reversal.
    again = api.post(f"/v1/payment_intents/{pi['id']}/cancel")
    assert again.status_code == 400 and error_of(again)["code"] == "payment_intent_unexpected_state"
    assert bank_view(stack_info, row["auth_rrn"]).kinds() == ["reversal"]


def test_cancel_before_confirm_never_reaches_the_bank(api: httpx.Client, stack_info: StackInfo,
                                                      merchant: Merchant) -> None:
    pi = _ok(_create(api, payment_method="pm_card_visa"))
    assert pi["status"] == "requires_confirmation"
    canceled = _ok(api.post(f"/v1/payment_intents/{pi['id']}/cancel", data={"cancellation_reason": "abandoned"}))
    assert (canceled["status"], canceled["cancellation_reason"]) == ("canceled", "abandoned")
    assert payment_row(stack_info, pi["id"])["auth_rrn"] is None
    assert merchant_authorizations(stack_info, merchant.id) == []


def test_automatic_capture_matches_bank(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _ok(_create(api, amount=777, payment_method="pm_card_visa", confirm="true", capture_method="automatic"))
    assert (pi["status"], pi["amount_received"]) == ("succeeded", 777)
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.kinds() == ["capture"] and bank.captured == 777


def test_create_then_confirm_then_capture(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _ok(_create(api, amount=1500, capture_method="manual"))
    assert pi["status"] == "requires_payment_method" and pi["payment_method"] is None
    assert payment_row(stack_info, pi["id"])["auth_rrn"] is None
    confirmed = _ok(api.post(f"/v1/payment_intents/{pi['id']}/confirm", data={"payment_method": "pm_card_visa"}))
    assert (confirmed["status"], confirmed["amount_capturable"]) == ("requires_capture", 1500)
    assert_bank_matches_ledger(stack_info, pi["id"])
    captured = _ok(api.post(f"/v1/payment_intents/{pi['id']}/capture", data={"amount_to_capture": "1500"}))
    assert captured["status"] == "succeeded"
    assert_bank_matches_ledger(stack_info, pi["id"])


# ---- 3. the state machine's refusals --------------------------------------------------------------

def test_capture_a_succeeded_payment_is_unexpected_state(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _ok(_create(api, payment_method="pm_card_visa", confirm="true"))
    response = api.post(f"/v1/payment_intents/{pi['id']}/capture")
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "payment_intent_unexpected_state")
    assert error["payment_intent"]["id"] == pi["id"] and error["payment_intent"]["status"] == "succeeded"
    _, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.kinds() == ["capture"]


def test_confirm_a_canceled_payment_is_unexpected_state(api: httpx.Client, stack_info: StackInfo,
                                                        merchant: Merchant) -> None:
    pi = _ok(_create(api, payment_method="pm_card_visa"))
    _ok(api.post(f"/v1/payment_intents/{pi['id']}/cancel"))
    response = api.post(f"/v1/payment_intents/{pi['id']}/confirm")
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "payment_intent_unexpected_state"
    assert error["payment_intent"]["status"] == "canceled"
    assert merchant_authorizations(stack_info, merchant.id) == []


@pytest.mark.parametrize("verb", ["capture", "cancel", "confirm"])
def test_more_illegal_transitions(api: httpx.Client, verb: str) -> None:
    """capture before confirm, cancel a succeeded one, confirm a succeeded one."""
    if verb == "capture":
        pi = _ok(_create(api, payment_method="pm_card_visa", capture_method="manual"))
        expected_status = "requires_confirmation"
    else:
        pi = _ok(_create(api, payment_method="pm_card_visa", confirm="true"))
        expected_status = "succeeded"
    response = api.post(f"/v1/payment_intents/{pi['id']}/{verb}")
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "payment_intent_unexpected_state"
    assert error["payment_intent"]["status"] == expected_status
    assert _ok(api.get(f"/v1/payment_intents/{pi['id']}"))["status"] == expected_status


def test_over_capture_is_amount_too_large_and_changes_nothing(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _authorized(api, 1000)
    response = api.post(f"/v1/payment_intents/{pi['id']}/capture", data={"amount_to_capture": "1001"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == ("amount_too_large", "amount_to_capture")
    after = _ok(api.get(f"/v1/payment_intents/{pi['id']}"))
    assert (after["status"], after["amount_capturable"], after["amount_received"]) == ("requires_capture", 1000, 0)
    _, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.operations == []
    for bad, code in (("0", "parameter_invalid_integer"), ("-5", "parameter_invalid_integer"),
                      ("1.5", "parameter_invalid_integer")):
        response = api.post(f"/v1/payment_intents/{pi['id']}/capture", data={"amount_to_capture": bad})
        assert response.status_code == 400, (bad, response.text)
        assert (error_of(response)["code"], error_of(response)["param"]) == (code, "amount_to_capture"), bad


def test_confirm_true_without_payment_method_leaves_nothing_behind(api: httpx.Client, stack_info: StackInfo,
                                                                  merchant: Merchant) -> None:
    """An error answer must not leave a payment the merchant was never told about (invariant 7)."""
    response = _create(api, confirm="true")
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == ("payment_intent_unexpected_state", "payment_method"), error
    payments = merchant_payments(stack_info, merchant.id)
    told = (error.get("payment_intent") or {}).get("id")
    assert [p["id"] for p in payments] == ([told] if told else []), (
        f"the 400 answer names no payment but the ledger holds {[p['id'] for p in payments]}")


def test_another_merchants_payment_method_is_not_usable(api: httpx.Client, other_api: httpx.Client,
                                                        stack_info: StackInfo, merchant: Merchant) -> None:
    theirs = tokenize(other_api, "4242424242424242")
    response = _create(api, payment_method=theirs, confirm="true")
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == ("resource_missing", "payment_method")
    assert merchant_authorizations(stack_info, merchant.id) == []


# ---- 4. validation ----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "code", "param"), [
    ({"currency": "usd"}, 400, "parameter_missing", "amount"),
    ({"amount": "1000"}, 400, "parameter_missing", "currency"),
    ({"amount": "0", "currency": "usd"}, 400, "parameter_invalid_integer", "amount"),
    ({"amount": "-5", "currency": "usd"}, 400, "parameter_invalid_integer", "amount"),
    ({"amount": "abc", "currency": "usd"}, 400, "parameter_invalid_integer", "amount"),
    ({"amount": "10.50", "currency": "usd"}, 400, "parameter_invalid_integer", "amount"),
    ({"amount": "49", "currency": "usd"}, 400, "amount_too_small", "amount"),
    ({"amount": "29", "currency": "gbp"}, 400, "amount_too_small", "amount"),
    ({"amount": "49", "currency": "jpy"}, 400, "amount_too_small", "amount"),
    ({"amount": "100000000", "currency": "usd"}, 400, "amount_too_large", "amount"),
    ({"amount": "1000", "currency": "xyz"}, 400, "parameter_invalid_string", "currency"),
    ({"amount": "1000", "currency": "usd", "capture_method": "later"}, 400, "parameter_invalid_string",
     "capture_method"),
    ({"amount": "1000", "currency": "usd", "confirm": "maybe"}, 400, "parameter_invalid_boolean", "confirm"),
    ({"amount": "1000", "currency": "usd", "colour": "red"}, 400, "parameter_unknown", "colour"),
    ({"amount": "1000", "currency": "usd", "payment_method": "pm_does_not_exist", "confirm": "true"}, 400,
     "resource_missing", "payment_method"),
    ({"amount": "1000", "currency": "usd", "statement_descriptor": "a" * 23}, 400, "parameter_invalid_string",
     "statement_descriptor"),
], ids=["no-amount", "no-currency", "zero", "negative", "abc", "decimal", "below-usd-min", "below-gbp-min",
        "below-jpy-min", "above-max", "unknown-currency", "bad-capture-method", "bad-boolean", "unknown-param",
        "unknown-payment-method", "long-descriptor"])
def test_create_validation(api: httpx.Client, stack_info: StackInfo, merchant: Merchant, body: dict[str, str],
                           status: int, code: str, param: str) -> None:
    response = api.post("/v1/payment_intents", data=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["type"], error["code"], error.get("param")) == ("invalid_request_error", code, param), error
    assert error["message"]
    assert merchant_payments(stack_info, merchant.id) == [], "a rejected request left a payment behind"


def _metadata(keys: int = 1, key_len: int = 5, value_len: int = 5) -> dict[str, str]:
    return {f"metadata[{str(i).rjust(key_len, 'k')}]": "v" * value_len for i in range(keys)}


@pytest.mark.parametrize(("meta", "param"), [
    (_metadata(keys=51), "metadata"),
    ({"metadata[" + "k" * 41 + "]": "v"}, "metadata[" + "k" * 40 + "]"),
    ({"metadata[note]": "v" * 501}, "metadata[note]"),
], ids=["51-keys", "41-char-key", "501-char-value"])
def test_metadata_limits_are_rejected(api: httpx.Client, stack_info: StackInfo, merchant: Merchant,
                                      meta: dict[str, str], param: str) -> None:
    response = api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", **meta})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert merchant_payments(stack_info, merchant.id) == []


def test_metadata_at_the_limits_is_accepted(api: httpx.Client) -> None:
    meta = {f"metadata[{'k' * 37}{i:03d}]": "v" * 500 for i in range(50)}
    pi = _ok(api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", **meta}))
    assert len(pi["metadata"]) == 50
    assert all(len(k) == 40 and v == "v" * 500 for k, v in pi["metadata"].items())
    assert _ok(api.get(f"/v1/payment_intents/{pi['id']}"))["metadata"] == pi["metadata"]


def test_zero_decimal_currency_jpy(api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _ok(_create(api, amount=500, currency="JPY", payment_method="pm_card_visa", confirm="true"))
    assert (pi["currency"], pi["amount"], pi["amount_received"], pi["status"]) == ("jpy", 500, 500, "succeeded")
    _, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.authorization is not None
    assert (bank.authorization.currency, bank.authorization.authorized_amount) == ("jpy", 500)
    entries = ledger_entries(stack_info, pi["id"])
    assert {e["currency"] for e in entries} == {"jpy"}


def test_json_body_works_like_a_form_body(api: httpx.Client, stack_info: StackInfo) -> None:
    response = api.post("/v1/payment_intents", json={
        "amount": 1234, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True,
        "capture_method": "manual", "description": "json order", "metadata": {"order": "A-1", "n": "2"}})
    pi = _ok(response)
    assert (pi["status"], pi["amount"], pi["currency"], pi["amount_capturable"]) == ("requires_capture", 1234, "eur",
                                                                                       1234)
    assert pi["metadata"] == {"order": "A-1", "n": "2"} and pi["description"] == "json order"
    captured = _ok(api.post(f"/v1/payment_intents/{pi['id']}/capture", json={"amount_to_capture": 1000}))
    assert (captured["status"], captured["amount_received"]) == ("succeeded", 1000)
    assert_bank_matches_ledger(stack_info, pi["id"])


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"currency": "usd"}, "parameter_missing", "amount"),
    ({"amount": 10.5, "currency": "usd"}, "parameter_invalid_integer", "amount"),
    ({"amount": True, "currency": "usd"}, "parameter_invalid_integer", "amount"),
    ({"amount": 1000, "currency": "usd", "metadata": {"k": {"nested": "x"}}}, "parameter_invalid_string",
     "metadata[k]"),
    ({"amount": 1000, "currency": "usd", "surprise": 1}, "parameter_unknown", "surprise"),
], ids=["missing", "float", "bool", "nested-metadata", "unknown"])
def test_json_body_validation(api: httpx.Client, stack_info: StackInfo, merchant: Merchant, body: dict[str, Any],
                              code: str, param: str) -> None:
    response = api.post("/v1/payment_intents", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["param"]) == (code, param), error
    assert merchant_payments(stack_info, merchant.id) == []


def test_malformed_json_is_400_not_500(api: httpx.Client) -> None:
    response = api.post("/v1/payment_intents", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "parameter_invalid_json"


# ---- 5. retrieve, list, another merchant's ids ----------------------------------------------------

def test_retrieve_returns_the_same_object(api: httpx.Client) -> None:
    created = _ok(_create(api, amount=2100, payment_method="pm_card_visa", confirm="true", description="d1",
                          **{"metadata[order]": "77"}))
    fetched = _ok(api.get(f"/v1/payment_intents/{created['id']}"))
    assert fetched == created
    missing = api.get("/v1/payment_intents/pi_doesnotexist")
    assert missing.status_code == 404
    assert (error_of(missing)["code"], error_of(missing)["type"]) == ("resource_missing", "invalid_request_error")


@pytest.mark.parametrize("action", ["retrieve", "confirm", "capture", "cancel"])
def test_another_merchants_payment_is_404(api: httpx.Client, other_api: httpx.Client, stack_info: StackInfo,
                                          action: str) -> None:
    pi = _authorized(api, 2000) if action != "confirm" else _ok(_create(api, payment_method="pm_card_visa"))
    if action == "retrieve":
        response = other_api.get(f"/v1/payment_intents/{pi['id']}")
    else:
        body = {"payment_method": "pm_card_visa"} if action == "confirm" else {}
        response = other_api.post(f"/v1/payment_intents/{pi['id']}/{action}", data=body)
    assert response.status_code == 404, response.text
    error = error_of(response)
    assert error["code"] == "resource_missing" and pi["id"] in error["message"]
    assert "payment_intent" not in error  # nothing of the owner's object leaks
    unchanged = _ok(api.get(f"/v1/payment_intents/{pi['id']}"))
    assert unchanged["status"] == pi["status"] and unchanged["amount_received"] == 0
    assert_bank_matches_ledger(stack_info, pi["id"])
    assert other_api.get("/v1/payment_intents").json()["data"] == []


def _ids(response: httpx.Response) -> list[str]:
    return [pi["id"] for pi in _ok(response)["data"]]


def test_list_newest_first_with_cursors(api: httpx.Client, other_api: httpx.Client) -> None:
    made = [_ok(_create(api, amount=1000 + i))["id"] for i in range(5)]
    _ok(_create(other_api))  # someone else's payment never shows
    newest = list(reversed(made))

    page = _ok(api.get("/v1/payment_intents", params={"limit": 2}))
    assert (page["object"], page["url"], page["has_more"]) == ("list", "/v1/payment_intents", True)
    assert [p["id"] for p in page["data"]] == newest[:2]
    assert all(p["object"] == "payment_intent" for p in page["data"])

    page2 = _ok(api.get("/v1/payment_intents", params={"limit": 2, "starting_after": newest[1]}))
    assert ([p["id"] for p in page2["data"]], page2["has_more"]) == (newest[2:4], True)
    page3 = _ok(api.get("/v1/payment_intents", params={"limit": 2, "starting_after": newest[3]}))
    assert ([p["id"] for p in page3["data"]], page3["has_more"]) == (newest[4:], False)

    before = _ok(api.get("/v1/payment_intents", params={"limit": 2, "ending_before": newest[4]}))
    assert ([p["id"] for p in before["data"]], before["has_more"]) == (newest[2:4], True)
    before_all = _ok(api.get("/v1/payment_intents", params={"limit": 10, "ending_before": newest[2]}))
    assert ([p["id"] for p in before_all["data"]], before_all["has_more"]) == (newest[:2], False)

    everything = _ok(api.get("/v1/payment_intents"))
    assert ([p["id"] for p in everything["data"]], everything["has_more"]) == (newest, False)


def test_list_created_filters(api: httpx.Client) -> None:
    early = [_ok(_create(api, amount=1000 + i)) for i in range(2)]
    # Wait for the clock's next second so the two groups have different `created`.
    while int(time.time()) <= early[-1]["created"]:
        time.sleep(0.05)
    late = [_ok(_create(api, amount=2000 + i)) for i in range(3)]
    assert late[0]["created"] > early[-1]["created"]
    cut = late[0]["created"]
    early_ids = [p["id"] for p in reversed(early)]
    late_ids = [p["id"] for p in reversed(late)]

    assert _ids(api.get("/v1/payment_intents", params={"created[gte]": cut})) == late_ids
    assert _ids(api.get("/v1/payment_intents", params={"created[lt]": cut})) == early_ids
    assert _ids(api.get("/v1/payment_intents", params={"created[lte]": early[-1]["created"]})) == early_ids
    assert _ids(api.get("/v1/payment_intents", params={"created[gt]": late[-1]["created"]})) == []
    assert _ids(api.get("/v1/payment_intents", params={"created[gte]": early[0]["created"],
                                                        "created[lte]": late[-1]["created"]})) == late_ids + early_ids
    paged = _ok(api.get("/v1/payment_intents", params={"created[gte]": cut, "limit": 2}))
    assert ([p["id"] for p in paged["data"]], paged["has_more"]) == (late_ids[:2], True)


@pytest.mark.parametrize(("params", "code", "param"), [
    ({"limit": 0}, "parameter_invalid_integer", "limit"),
    ({"limit": 101}, "parameter_invalid_integer", "limit"),
    ({"limit": "ten"}, "parameter_invalid_integer", "limit"),
    ({"created[between]": 5}, "parameter_unknown", "created[between]"),
    ({"starting_after": "pi_nope"}, "resource_missing", "starting_after"),
    ({"colour": "red"}, "parameter_unknown", "colour"),
    ({"created[gte]": "yesterday"}, "parameter_invalid_integer", "created[gte]"),
    ({"created": "-1"}, "parameter_invalid_integer", "created"),
], ids=["limit-0", "limit-101", "limit-ten", "created-op", "bad-cursor", "unknown", "created-gte-text",
        "created-negative"])
def test_list_validation(api: httpx.Client, params: dict[str, Any], code: str, param: str) -> None:
    response = api.get("/v1/payment_intents", params=params)
    assert response.status_code in (400, 404), response.text
    error = error_of(response)
    assert (error["code"], error.get("param")) == (code, param), error


def test_another_merchants_id_is_not_a_cursor(api: httpx.Client, other_api: httpx.Client) -> None:
    theirs = _ok(_create(other_api))
    _ok(_create(api))
    response = api.get("/v1/payment_intents", params={"starting_after": theirs["id"]})
    assert response.status_code == 404, response.text
    assert error_of(response)["code"] == "resource_missing"


# ---- 7. a bank that never answers -------------------------------------------------------------------

def test_a_payment_the_bank_never_answers_does_not_hold_up_the_merchants_others(api: httpx.Client) -> None:
    """Each hop sends its queue in batches while a call is out; the call carrying the unanswered
    authorization must count as stuck after a while, or everything queued behind it waits for
    the bank timeout too."""
    stuck_pm = tokenize(api, NEVER_ANSWER_CARD)
    with ThreadPoolExecutor(max_workers=6) as pool:
        stuck = pool.submit(_create, api, amount=3100, payment_method=stuck_pm, confirm="true")
        time.sleep(0.5)  # its authorization is at the bank, which holds it for the 2 s timeout
        assert not stuck.done()
        started = time.monotonic()
        others = [pool.submit(_create, api, amount=1000 + i, payment_method="pm_card_visa", confirm="true")
                  for i in range(5)]
        answers = [future.result() for future in others]
        took = time.monotonic() - started
        assert not stuck.done(), f"the others took {took:.2f}s: as long as the bank timeout"
        assert [_ok(a)["status"] for a in answers] == ["succeeded"] * 5
        assert took < 1.0, f"five payments took {took:.2f}s behind one the bank never answered"
        assert stuck.result().status_code == 402


@pytest.mark.parametrize("card", [NEVER_ANSWER_CARD, SLOW_CARD], ids=["never-answers", "answers-too-late"])
@pytest.mark.parametrize("capture_method", ["automatic", "manual"])
def test_bank_timeout_reverses_and_fails_cleanly(api: httpx.Client, stack_info: StackInfo, merchant: Merchant,
                                                 card: str, capture_method: str) -> None:
    pm = tokenize(api, card)
    started = time.monotonic()
    response = _create(api, amount=3100, payment_method=pm, confirm="true", capture_method=capture_method)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the call took {elapsed:.1f}s with a 2s bank timeout"
    assert response.status_code == 402, response.text
    error = error_of(response)
    assert (error["type"], error["code"], error["decline_code"]) == ("card_error", "processing_error",
                                                                     "processing_error")
    pi_id = error["payment_intent"]["id"]
    pi = _ok(api.get(f"/v1/payment_intents/{pi_id}"))
    assert pi["status"] == "requires_payment_method"
    assert pi["last_payment_error"]["code"] == "processing_error"
    assert (pi["amount_capturable"], pi["amount_received"]) == (0, 0)

    row, bank = assert_bank_matches_ledger(stack_info, pi_id)
    # The bank approved and journaled it (its reply was lost or late): a reversal released it. An
    # automatic capture's purchase (0200) was captured with its approval: the reversal undid both.
    assert bank.authorization is not None and bank.authorization.authorized_amount == 3100
    automatic = capture_method == "automatic"
    assert bank.reversed and bank.kinds() == (["capture", "reversal"] if automatic else ["reversal"])
    assert bank.captured == 0
    answers = bank_answers(stack_info, row["auth_rrn"])
    assert answers["0200" if automatic else "0100"]["silent"] is (card == NEVER_ANSWER_CARD), answers
    assert answers["0400"]["fields"]["39"] == "00", answers
    assert ledger_entries(stack_info, pi_id) == []
    nets = [a for a in merchant_authorizations(stack_info, merchant.id) if a.state != "reversed"]
    assert nets == []
    # The bank's raw answers went into payment_events with the PAN masked.
    events = ledger(stack_info, "SELECT data::text AS d FROM payment_events WHERE payment_id = $1", pi_id)
    assert events and not any(card in e["d"] for e in events)
