"""The official `stripe` Python SDK (v16) as a real client of paygate: only the base URL changes.
Every PaymentIntent call the payments issue lists, plus a decline surfacing as `stripe.CardError`."""

from __future__ import annotations

import uuid

import httpx
import pytest
import stripe

from cluster.stack import StackInfo
from tests.bank import assert_bank_matches_ledger, merchant_authorizations
from tests.conftest import Merchant


def _client(base_url: str, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": base_url}, max_network_retries=0)


@pytest.fixture
def sdk(base_url: str, merchant: Merchant) -> stripe.StripeClient:
    return _client(base_url, merchant.key)


def test_create_confirmed_retrieve_and_list(sdk: stripe.StripeClient, stack_info: StackInfo) -> None:
    pi = sdk.v1.payment_intents.create(params={
        "amount": 2000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True,
        "description": "sdk order", "metadata": {"order_id": "sdk-1", "note": "a b&c=d"}})
    assert isinstance(pi, stripe.PaymentIntent)
    assert (pi.status, pi.amount, pi.amount_received, pi.currency) == ("succeeded", 2000, 2000, "usd")
    assert pi.metadata.to_dict() == {"order_id": "sdk-1", "note": "a b&c=d"}
    assert pi.description == "sdk order" and pi.latest_charge.startswith("ch_")
    assert_bank_matches_ledger(stack_info, pi.id)

    fetched = sdk.v1.payment_intents.retrieve(pi.id)
    assert (fetched.id, fetched.status, fetched.amount_received) == (pi.id, "succeeded", 2000)
    expanded = sdk.v1.payment_intents.retrieve(pi.id, params={"expand": ["latest_charge"]})
    assert expanded.latest_charge.id == pi.latest_charge and expanded.latest_charge.amount_captured == 2000

    more = [sdk.v1.payment_intents.create(params={"amount": 1000 + i, "currency": "usd"}).id for i in range(4)]
    page = sdk.v1.payment_intents.list(params={"limit": 2})
    assert [p.id for p in page.data] == [more[3], more[2]] and page.has_more is True
    # The SDK's own pagination walks every page with starting_after.
    walked = [p.id for p in sdk.v1.payment_intents.list(params={"limit": 2}).auto_paging_iter()]
    assert walked == [*reversed(more), pi.id]


def test_confirm_then_partial_capture(sdk: stripe.StripeClient, stack_info: StackInfo) -> None:
    pi = sdk.v1.payment_intents.create(params={"amount": 5000, "currency": "usd", "capture_method": "manual"})
    assert pi.status == "requires_payment_method"
    confirmed = sdk.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_mastercard"})
    assert (confirmed.status, confirmed.amount_capturable) == ("requires_capture", 5000)
    assert_bank_matches_ledger(stack_info, pi.id)
    captured = sdk.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 1800})
    assert (captured.status, captured.amount_received, captured.amount_capturable) == ("succeeded", 1800, 0)
    _, bank = assert_bank_matches_ledger(stack_info, pi.id)
    assert bank.captured == 1800


def test_cancel_reverses_at_the_bank(sdk: stripe.StripeClient, stack_info: StackInfo) -> None:
    pi = sdk.v1.payment_intents.create(params={"amount": 3300, "currency": "usd", "payment_method": "pm_card_visa",
                                               "confirm": True, "capture_method": "manual"})
    assert pi.status == "requires_capture"
    canceled = sdk.v1.payment_intents.cancel(pi.id, params={"cancellation_reason": "fraudulent"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "fraudulent")
    assert canceled.canceled_at is not None
    _, bank = assert_bank_matches_ledger(stack_info, pi.id)
    assert bank.reversed and bank.kinds() == ["reversal"]


@pytest.mark.parametrize(("pm", "code", "decline_code"), [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
])
def test_decline_is_a_card_error(sdk: stripe.StripeClient, stack_info: StackInfo, merchant: Merchant, pm: str,
                                 code: str, decline_code: str) -> None:
    with pytest.raises(stripe.CardError) as caught:
        sdk.v1.payment_intents.create(params={"amount": 2000, "currency": "usd", "payment_method": pm,
                                              "confirm": True})
    error = caught.value
    assert error.http_status == 402
    assert (error.code, error.error.decline_code) == (code, decline_code)
    assert error.user_message
    pi_id = error.error.payment_intent.id
    pi = sdk.v1.payment_intents.retrieve(pi_id)
    assert pi.status == "requires_payment_method"
    assert (pi.last_payment_error.code, pi.last_payment_error.decline_code) == (code, decline_code)
    assert merchant_authorizations(stack_info, merchant.id) == []


def test_invalid_requests_are_typed_errors(sdk: stripe.StripeClient, base_url: str, admin: httpx.Client) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        sdk.v1.payment_intents.create(params={"currency": "usd"})  # type: ignore[typeddict-item]
    assert (missing.value.http_status, missing.value.code, missing.value.param) == (400, "parameter_missing",
                                                                                   "amount")
    pi = sdk.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa",
                                               "confirm": True})
    with pytest.raises(stripe.InvalidRequestError) as state:
        sdk.v1.payment_intents.capture(pi.id)
    assert (state.value.http_status, state.value.code) == (400, "payment_intent_unexpected_state")

    other = admin.post("/v1/admin/merchants", data={"name": "sdk other"}).json()
    with pytest.raises(stripe.InvalidRequestError) as not_theirs:
        _client(base_url, other["secret_key"]).v1.payment_intents.retrieve(pi.id)
    assert (not_theirs.value.http_status, not_theirs.value.code) == (404, "resource_missing")

    with pytest.raises(stripe.AuthenticationError):
        _client(base_url, "sk_test_not_a_real_key").v1.payment_intents.list()


def test_idempotency_key_through_the_sdk(sdk: stripe.StripeClient, stack_info: StackInfo,
                                         merchant: Merchant) -> None:
    key = f"sdk-{uuid.uuid4()}"
    params = {"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    first = sdk.v1.payment_intents.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
    again = sdk.v1.payment_intents.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
    assert again.id == first.id
    assert again.last_response.headers.get("idempotent-replayed") == "true"
    assert again.last_response.idempotency_key == key
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.payment_intents.create(params={**params, "amount": 2600},  # type: ignore[arg-type]
                                      options={"idempotency_key": key})
