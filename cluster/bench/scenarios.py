"""The shapes of work: one flow per payment, each a short sequence of Stripe API calls.

A flow returns True when every answer was the one expected (a decline in `decline-mix` is
expected), and records in the client's books what each payment must look like in the ledger.
"""

from __future__ import annotations

import asyncio
import functools

import orjson

from cluster.bench.book import intent_from
from cluster.bench.client import Response, form
from cluster.bench.loadgen import Driver, Flow
from cluster.bench.provision import Merchant

APPROVED_CARDS = ("4242424242424242", "5555555555554444")
DECLINED_CARDS = {"4000000000000002": "generic_decline", "4000000000009995": "insufficient_funds"}
TEST_METHODS = ("pm_card_visa", "pm_card_mastercard")

PM = "POST /v1/payment_methods"
PI = "POST /v1/payment_intents"
PI_REPLAY = "POST /v1/payment_intents (same key again)"
CAPTURE = "POST /v1/payment_intents/{id}/capture"
CANCEL = "POST /v1/payment_intents/{id}/cancel"
REFUND = "POST /v1/refunds"


@functools.cache  # two card numbers, the same body each time
def _card(number: str) -> bytes:
    return form({"type": "card", "card[number]": number, "card[exp_month]": 12, "card[exp_year]": 2034,
                 "card[cvc]": "123"})


def _intent(amount: int, method: str, capture: str = "automatic") -> bytes:
    return form({"amount": amount, "currency": "usd", "payment_method": method, "confirm": "true",
                 "capture_method": capture})


async def _tokenize(d: Driver, m: Merchant, number: str, due: float) -> str | None:
    r = await d.call(PM, m.requests.post("/v1/payment_methods", _card(number)), started=due)
    return str(orjson.loads(r.body)["id"]) if r and r.status == 200 else None


def _book(d: Driver, m: Merchant, r: Response | None, want: str) -> str | None:
    """Book the PaymentIntent in `r`; its id if it reached status `want`."""
    intent = intent_from(r.body, r.status) if r else None
    if intent is None:
        return None
    expected = d.book.intent(m.id or "", intent)
    if expected.status != want:
        d.recorder.errors[f"{PI}: status {expected.status}, expected {want}"] += 1
        return None
    return str(intent["id"])


async def checkout(d: Driver, m: Merchant, i: int, due: float) -> bool:
    method = await _tokenize(d, m, APPROVED_CARDS[i % 2], due)
    if method is None:
        return False
    r = await d.call(PI, m.requests.post("/v1/payment_intents", _intent(d.amount(), method)), creates=True)
    return _book(d, m, r, "succeeded") is not None


async def auth_capture(d: Driver, m: Merchant, i: int, due: float) -> bool:
    """Manual capture: 70% full capture, 20% partial, 10% cancel (the bank reverses the hold)."""
    amount = d.amount()
    raw = m.requests.post("/v1/payment_intents", _intent(amount, TEST_METHODS[i % 2], "manual"))
    payment = _book(d, m, await d.call(PI, raw, started=due, creates=True), "requires_capture")
    if payment is None:
        return False
    roll = d.rng.random()
    if roll < 0.1:
        label, path, body, want = CANCEL, f"/v1/payment_intents/{payment}/cancel", b"", "canceled"
    else:
        share = 1.0 if roll >= 0.3 else d.rng.uniform(0.2, 0.9)
        label, path, want = CAPTURE, f"/v1/payment_intents/{payment}/capture", "succeeded"
        body = form({"amount_to_capture": max(1, int(amount * share))})
    r = await d.call(label, m.requests.post(path, body))
    if r is None:
        d.book.lost(payment)
    return _book(d, m, r, want) is not None


async def refund_mix(d: Driver, m: Merchant, i: int, due: float) -> bool:
    """Automatic capture, then 30% no refund, 50% one partial refund, 20% a partial and the rest."""
    amount = d.amount()
    raw = m.requests.post("/v1/payment_intents", _intent(amount, TEST_METHODS[i % 2]))
    payment = _book(d, m, await d.call(PI, raw, started=due, creates=True), "succeeded")
    if payment is None:
        return False
    roll = d.rng.random()
    refunds = [] if roll < 0.3 else [int(amount * d.rng.uniform(0.1, 0.6))]
    if roll >= 0.8:
        refunds.append(0)  # no amount: refund what is left
    for part in refunds:
        params: dict[str, str | int] = {"payment_intent": payment, **({"amount": part} if part else {})}
        r = await d.call(REFUND, m.requests.post("/v1/refunds", form(params)))
        d.book.refund(payment, orjson.loads(r.body) if r and r.status == 200 else None)
        if r is None or r.status != 200:
            return False
    return True


async def decline_mix(d: Driver, m: Merchant, i: int, due: float) -> bool:
    """Tokenized cards, 30% of them declining (generic and insufficient funds): a decline is a 402."""
    roll = d.rng.random()
    number = (list(DECLINED_CARDS)[int(roll < 0.15)] if roll < 0.3 else APPROVED_CARDS[i % 2])
    method = await _tokenize(d, m, number, due)
    if method is None:
        return False
    r = await d.call(PI, m.requests.post("/v1/payment_intents", _intent(d.amount(), method)),
                     ok=(200, 402), creates=True)
    want = "requires_payment_method" if number in DECLINED_CARDS else "succeeded"
    return _book(d, m, r, want) is not None


async def idempotent_retry(d: Driver, m: Merchant, i: int, due: float) -> bool:
    """Each create sent 2-3 times with one Idempotency-Key; half the time a copy goes concurrently
    (409 or the same answer), then a sequential copy must be a byte-identical replay."""
    raw = m.requests.post("/v1/payment_intents", _intent(d.amount(), TEST_METHODS[i % 2]),
                          idempotency_key=f"bench-{d.run_id}-{i}")
    concurrent = d.rng.random() < 0.5
    ok = (200, 409) if concurrent else (200,)  # of two at once, one may find the key in use
    first = [d.call(PI, raw, started=due, ok=ok, creates=True)]
    if concurrent:
        first.append(d.call(PI_REPLAY, raw, started=due, ok=ok))
    answers = [r for r in await asyncio.gather(*first) if r is not None and r.status == 200]
    if not answers:
        return False
    replays = [await d.call(PI_REPLAY, raw) for _ in range(1 + int(d.rng.random() < 0.3))]
    payment = _book(d, m, answers[0], "succeeded")
    _check_replays(d, payment or f"key bench-{d.run_id}-{i}", answers[0], answers[1:], replays)
    return payment is not None and all(r is not None and r.status == 200 for r in replays)


def _check_replays(d: Driver, subject: str, original: Response, concurrent: list[Response],
                   replays: list[Response | None]) -> None:
    for r in [*concurrent, *replays]:
        if r is not None and r.status == 200 and r.body != original.body:
            d.book.idempotency_breach(subject, "a retry with the same Idempotency-Key got a different body")
    for r in replays:
        if r is not None and r.status == 200 and not r.replayed:
            d.book.idempotency_breach(subject, "a sequential retry was not marked Idempotent-Replayed")


SCENARIOS: dict[str, Flow] = {
    "checkout": checkout,
    "auth-capture": auth_capture,
    "refund-mix": refund_mix,
    "decline-mix": decline_mix,
    "idempotent-retry": idempotent_retry,
}
