"""One operation per API verb: create, confirm, capture, cancel, plus `resolve` for payments left
in `processing`. Each runs the same pipeline: validate, load or create, transition, call out, apply
the result. Ledger writes go through `store`; the bank is reached only through the AcquirerLink."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from actors.acquirer.link import AuthorizeOrder, BankOutcome
from actors.acquirer.messages import AcquirerRequest, Kind, OriginalRef
from actors.batching import RowBatcher
from actors.errors import ApiError, CardError, InvalidRequest, NotFound, StripeError
from actors.fraud.reviews import needs_review, open_if_flagged
from actors.ids import new_id
from actors.payments import idempotency, store
from actors.payments.messages import CARD_FACTS, Idempotency, PaymentCommand, Reply
from actors.payments.render import dumps, payment_intent_object
from actors.payments.risk import RiskAssessor, RiskDecision
from actors.payments.states import Action

log = logging.getLogger("paygate.payments")

# Stripe's error `code` for a decline, by decline_code (the rest are `card_declined`).
_ERROR_CODE = {"expired_card": "expired_card", "incorrect_cvc": "incorrect_cvc",
               "processing_error": "processing_error", "incorrect_number": "incorrect_number"}
_DECLINE_MESSAGE = {
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "insufficient_funds": "Your card has insufficient funds.",
    "fraudulent": "Your card was declined.",
}


@dataclass
class Ports:
    """What an operation may reach: the ledger, the vault (metadata only) and the bank link."""

    pool: asyncpg.Pool
    vault: Any
    link: Any
    risk: RiskAssessor
    bank_ids: store.BankIds = field(init=False)
    rows: RowBatcher = field(init=False)  # the hot path's one-statement writes, batched across payments

    def __post_init__(self) -> None:
        self.bank_ids = store.BankIds(self.pool)
        self.rows = RowBatcher(self.pool)


def unexpected_state(row: asyncpg.Record, action: str) -> InvalidRequest:
    return InvalidRequest(
        f"You cannot {action} this PaymentIntent because it has a status of {row['status']}.",
        code="payment_intent_unexpected_state", param=None,
        payment_intent=payment_intent_object(row),
    )


def ok(row: asyncpg.Record) -> Reply:
    return Reply(200, dumps(payment_intent_object(row)))


def failure(error: StripeError) -> Reply:
    return Reply(error.status, error.body_bytes())


def captured_changes(row: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The row's changes when the bank has made its capture (of the pending amount)."""
    return {**changes, "bank_phase": None, "processing_since": None, "amount_received": row["pending_amount"],
            "amount_capturable": 0, "pending_stan": None, "pending_rrn": None, "pending_amount": None}


async def book_capture(conn: store.Writer, row: asyncpg.Record, changes: Mapping[str, Any],
                       bank: dict[str, Any], along: store.Along | None = None) -> asyncpg.Record:
    """Book a capture the bank has made (the pending amount): the transition to `succeeded`, the
    double entry and the events, in one statement. The one place this is written, whoever learnt
    of the capture (the bank's answer, or the reconciler from the settlement file). As Stripe does,
    a charge captured with its authorization `succeeded`; one captured later was `captured`."""
    amount = row["pending_amount"]
    ledger = [("acquirer_receivable", amount), ("merchant_balance", -amount)]
    charge_event = "charge.succeeded" if row["capture_method"] == "automatic" else "charge.captured"
    return await store.transition(conn, row, "captured", captured_changes(row, changes),
                                  events=["payment_intent.succeeded", charge_event], bank=bank,
                                  along=replace(along or store.Along(), ledger=ledger, ledger_description="capture"))


class Operations:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    # ---- create / confirm ------------------------------------------------------------------
    async def create(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        if recovery_point:
            return await self._resume(cmd, recovery_point)
        if cmd.confirm and not cmd.payment_method:
            raise InvalidRequest("You cannot confirm this PaymentIntent because it's missing a payment method.",
                                 code="payment_intent_unexpected_state", param="payment_method")
        card = await self._payment_method(cmd) if cmd.payment_method else None
        status = "requires_confirmation" if card else "requires_payment_method"
        values = {
            "merchant_id": cmd.merchant_id, "amount": cmd.amount, "currency": cmd.currency, "status": status,
            "capture_method": cmd.capture_method, "payment_method": card["id"] if card else None,
            "description": cmd.description, "statement_descriptor": cmd.statement_descriptor,
            "metadata": cmd.metadata, "created": int(time.time()),
        }
        pool = self.ports.pool
        if cmd.confirm and card:  # created already confirmed: one statement, the recovery point with it
            confirmed = store.Step("confirm", await self._authorization_changes(values, card))
            # The risk check needs only what the row will hold, so it runs while the row is written:
            # one hop less on the way to the bank, and this batch's checks travel together.
            payment_id = new_id("pi")
            row, decision = await asyncio.gather(
                store.insert(self.ports.rows, values, recovery_key=cmd.idempotency, then=confirmed,
                             payment_id=payment_id),
                self.ports.risk.assess({**values, **confirmed.changes, "id": payment_id}, card, cmd.risk))
            return await self._authorize(cmd, row, card, decision)
        async with pool.acquire() as conn, conn.transaction():
            row = await store.insert(conn, values, recovery_key=cmd.idempotency)
            reply = ok(row)
            await idempotency.finish(conn, cmd.merchant_id, cmd.idempotency, reply)
        return reply

    async def confirm(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        row = await self._load(cmd)
        if row["status"] == "processing" and recovery_point:
            return await self.resolve(row, cmd)
        pm_id = cmd.payment_method or row["payment_method"]
        if row["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise unexpected_state(row, "confirm")
        if not pm_id:
            raise InvalidRequest("You cannot confirm this PaymentIntent because it's missing a payment method.",
                                 code="payment_intent_unexpected_state", param="payment_method")
        card = await self._payment_method(cmd, pm_id)
        row = await store.transition(self.ports.rows, row, "confirm", await self._authorization_changes(row, card),
                                     along=store.Along(recovery=cmd.idempotency))
        return await self._authorize(cmd, row, card)

    async def _authorization_changes(self, row: Mapping[str, Any], card: dict[str, Any]) -> dict[str, Any]:
        """processing/authorizing with the bank ids persisted first: the recovery point. An automatic
        capture gets its capture's ids now too: the purchase names the capture's RRN, so the bank's
        approval is the capture.

        No event announces it: as in Stripe, a card payment goes from confirmation straight to its
        outcome (`processing` is for payment methods that take days). Here it is where the bank
        call is in flight, and the outcome's events follow within the request, or from the
        recovery sweep when the bank's answer is in doubt."""
        automatic = row["capture_method"] == "automatic"
        ids = await self.ports.bank_ids.take(2 if automatic else 1)
        (stan, rrn), capture = ids[0], ids[1] if automatic else (None, None)
        return {
            "payment_method": card["id"], "bank_phase": "authorizing", "auth_stan": stan, "auth_rrn": rrn,
            "pending_stan": capture[0], "pending_rrn": capture[1],
            "pending_amount": row["amount"] if automatic else None,
            "processing_since": _now(), "last_payment_error": None, "latest_charge": new_id("ch"),
            "charge": {"card": _charge_card(card), "status": "pending", "created": int(time.time())},
        }

    async def _authorize(self, cmd: PaymentCommand, row: asyncpg.Record, card: dict[str, Any],
                         decision: RiskDecision | None = None) -> Reply:
        decision = decision or await self.ports.risk.assess(row, card, cmd.risk)
        if decision.outcome == "blocked":
            return await self._fail(cmd, row, "fraudulent", decision=decision)
        order = AuthorizeOrder(row["id"], row["payment_method"], row["amount"], row["currency"],
                               row["merchant_id"], row["auth_stan"], row["auth_rrn"], _reversal_stan(row["auth_stan"]),
                               capture_rrn=row["pending_rrn"] if row["capture_method"] == "automatic" else None)
        outcome: BankOutcome = await self.ports.link.authorize(order)
        if outcome.status == "unknown":
            # Neither answer nor confirmed reversal: the recovery sweep settles it from the bank.
            return failure(_processing_error_unknown(row))
        self.ports.risk.record_outcome(row, card, cmd.risk, outcome.status)  # declines feed the risk windows
        if outcome.status != "approved":
            code = outcome.response.decline_code if outcome.status == "declined" and outcome.response else None
            return await self._fail(cmd, row, code or "processing_error", outcome=outcome, decision=decision)
        return await self._approved(cmd, row, outcome, decision)

    async def _approved(self, cmd: PaymentCommand | None, row: asyncpg.Record, outcome: BankOutcome,
                        decision: RiskDecision | None) -> Reply:
        response = outcome.response
        assert response is not None
        charge = {**(row["charge"] if isinstance(row["charge"], dict) else _loads(row["charge"])),
                  "status": "succeeded", "paid": True, "outcome": _outcome(decision)}
        changes = {"auth_code": response.auth_code, "auth_transmitted_at": outcome.transmitted_at,
                   "charge": charge}
        idem = cmd.idempotency if cmd else None
        if row["capture_method"] == "manual":
            return await self._hold(row, {**changes, "bank_phase": None, "processing_since": None,
                                          "amount_capturable": row["amount"]}, response.raw, idem)
        # Automatic capture: the purchase captured it, under the ids persisted before it was sent, so
        # a crash from here on is settled by reversing the purchase (the bank releases the capture too).
        return await self._capture_at_bank(cmd, row, approval=changes, auth_raw=response.raw, sent=outcome.capture)

    async def _hold(self, row: asyncpg.Record, changes: dict[str, Any], bank: dict[str, Any],
                    idem: Idempotency | None) -> Reply:
        """A manual capture's approval: the hold, its event and the stored reply in one statement;
        in a transaction only when a review must open with it."""
        events = ["payment_intent.amount_capturable_updated"]
        if not needs_review(changes):
            return await self._book(row, "bank_approved", changes, events, idem, bank=bank)
        async with self.ports.pool.acquire() as conn, conn.transaction():
            row = await store.transition(conn, row, "bank_approved", changes, events=events, bank=bank)
            await open_if_flagged(conn, row)  # manual_review: review.opened with the approval
            reply = ok(row)
            await idempotency.finish(conn, row["merchant_id"], idem, reply)
        return reply

    async def _fail(self, cmd: PaymentCommand | None, row: asyncpg.Record, decline_code: str,
                    outcome: BankOutcome | None = None, decision: RiskDecision | None = None) -> Reply:
        code = _ERROR_CODE.get(decline_code, "card_declined")
        error = {"type": "card_error", "code": code, "decline_code": decline_code,
                 "message": _DECLINE_MESSAGE.get(decline_code, "Your card was declined."),
                 "charge": row["latest_charge"], "payment_method": {"id": row["payment_method"]}}
        charge = {**_loads(row["charge"]), "status": "failed", "paid": False, "failure_code": code,
                  "failure_message": error["message"], "outcome": _outcome(decision, declined=True)}
        bank: dict[str, Any] = dict(outcome.response.raw) if outcome and outcome.response else {
            "detail": outcome.detail if outcome else ""}
        if decision and decision.outcome == "blocked":
            bank = {"risk": decision.as_dict()}
        changes = {"bank_phase": None, "processing_since": None, "last_payment_error": error, "charge": charge,
                   "pending_stan": None, "pending_rrn": None, "pending_amount": None}
        card_error = CardError(error["message"], code=code, param=None, decline_code=decline_code,
                               charge=row["latest_charge"],
                               payment_intent=payment_intent_object(store.preview(row, "bank_declined", changes)))
        reply = failure(card_error)
        idem = cmd.idempotency if cmd else None
        await store.transition(self.ports.rows, row, "bank_declined", changes, events=["payment_intent.payment_failed"],
                               bank=bank, along=store.Along(finish=(idem, reply) if idem else None))
        return reply

    # ---- capture ---------------------------------------------------------------------------
    async def capture(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        row = await self._load(cmd)
        if row["status"] == "processing" and recovery_point:
            return await self.resolve(row, cmd)
        if row["status"] != "requires_capture":
            raise unexpected_state(row, "capture")
        amount = row["amount_capturable"] if cmd.amount_to_capture is None else cmd.amount_to_capture
        if amount > row["amount_capturable"]:
            raise InvalidRequest(
                f"The amount to capture ({amount}) is greater than the amount capturable "
                f"({row['amount_capturable']}).", code="amount_too_large", param="amount_to_capture")
        [(stan, rrn)] = await self.ports.bank_ids.take()
        row = await store.transition(self.ports.rows, row, "capture", {
            "bank_phase": "capturing", "pending_stan": stan, "pending_rrn": rrn, "pending_amount": amount,
            "processing_since": _now()}, along=store.Along(recovery=cmd.idempotency))
        return await self._capture_at_bank(cmd, row)

    async def _capture_at_bank(self, cmd: PaymentCommand | None, row: asyncpg.Record,
                               approval: dict[str, Any] | None = None, auth_raw: dict[str, Any] | None = None,
                               sent: BankOutcome | None = None) -> Reply:
        """Complete the capture at the bank — or take the capture the purchase made (`sent`) — and
        book what the bank said."""
        outcome = sent or await self.ports.link.send(AcquirerRequest(
            "capture", row["pending_stan"], row["pending_rrn"], row["pending_amount"], row["currency"],
            row["merchant_id"], original=original_of(row)))
        if outcome.status == "unknown":
            return failure(_processing_error_unknown(row))
        idem = cmd.idempotency if cmd else None
        if outcome.status == "approved":
            return await self._book_approved_capture(row, outcome, idem, approval, auth_raw)
        async with self.ports.pool.acquire() as conn, conn.transaction():
            if auth_raw is not None:
                await store.append_event(conn, row, "charge.authorized", "processing", auth_raw)
            row = await store.transition(conn, row, "capture_failed", {
                **(approval or {}), "amount_capturable": row["amount"] if approval else row["amount_capturable"],
                "bank_phase": None, "processing_since": None, "pending_stan": None, "pending_rrn": None,
                "pending_amount": None}, bank=_raw(outcome))
            reply = failure(InvalidRequest("The bank refused the capture; the authorization is unchanged.",
                                           code="charge_not_capturable", payment_intent=payment_intent_object(row)))
            if approval is not None:
                await open_if_flagged(conn, row)  # manual_review: review.opened with the approval
            await idempotency.finish(conn, row["merchant_id"], idem, reply)
        return reply

    async def _book_approved_capture(self, row: asyncpg.Record, outcome: BankOutcome, idem: Idempotency | None,
                                     approval: dict[str, Any] | None, auth_raw: dict[str, Any] | None) -> Reply:
        """The hot path's last write — authorization event, capture, ledger group, stored reply — as
        one statement; in a transaction only when a review must open with it."""
        changes = captured_changes(row, approval or {})
        reply = ok(store.preview(row, "captured", changes))
        along = store.Along(
            earlier=store.PaymentEvent("charge.authorized", "processing", row["status"], auth_raw)
            if auth_raw is not None else None,
            finish=(idem, reply) if idem else None)
        if approval is None or not needs_review(approval):
            await book_capture(self.ports.rows, row, changes, _raw(outcome), along)
            return reply
        async with self.ports.pool.acquire() as conn, conn.transaction():
            row = await book_capture(conn, row, changes, _raw(outcome), along)
            await open_if_flagged(conn, row)  # manual_review: review.opened with the approval
        return reply

    # ---- cancel ----------------------------------------------------------------------------
    async def cancel(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        row = await self._load(cmd)
        if row["status"] == "processing" and recovery_point:
            return await self.resolve(row, cmd)
        if row["status"] in ("requires_payment_method", "requires_confirmation"):
            changes = {"canceled_at": int(time.time()), "cancellation_reason": cmd.cancellation_reason}
            return await self._book(row, "cancel", changes, ["payment_intent.canceled"], cmd.idempotency)
        if row["status"] != "requires_capture":
            raise unexpected_state(row, "cancel")
        [(stan, _)] = await self.ports.bank_ids.take()
        row = await store.transition(self.ports.rows, row, "cancel", {
            "bank_phase": "reversing", "pending_stan": stan, "pending_rrn": row["auth_rrn"],
            "pending_amount": row["amount_capturable"], "processing_since": _now(),
            "cancellation_reason": cmd.cancellation_reason}, along=store.Along(recovery=cmd.idempotency))
        return await self._reverse_at_bank(cmd, row)

    async def _reverse_at_bank(self, cmd: PaymentCommand | None, row: asyncpg.Record) -> Reply:
        request = AcquirerRequest("reversal", row["pending_stan"], row["auth_rrn"], row["pending_amount"],
                                  row["currency"], row["merchant_id"], original=original_of(row))
        outcome: BankOutcome = await self.ports.link.send(request)
        if outcome.status in ("unknown", "failed"):
            return failure(_processing_error_unknown(row))
        changes = {"bank_phase": None, "processing_since": None, "amount_capturable": 0,
                   "canceled_at": int(time.time()), "pending_stan": None, "pending_rrn": None, "pending_amount": None}
        return await self._book(row, "canceled", changes, ["payment_intent.canceled"],
                                cmd.idempotency if cmd else None, bank=_raw(outcome))

    async def _book(self, row: asyncpg.Record, action: Action, changes: dict[str, Any], events: list[str],
                    idem: Idempotency | None, bank: dict[str, Any] | None = None) -> Reply:
        """A transition whose reply is the moved PaymentIntent: the row, its events and the stored
        reply in one statement, batched with other payments' of that shape."""
        reply = ok(store.preview(row, action, changes))
        await store.transition(self.ports.rows, row, action, changes, events=events, bank=bank,
                               along=store.Along(finish=(idem, reply) if idem else None))
        return reply

    # ---- recovery --------------------------------------------------------------------------
    async def resolve(self, row: asyncpg.Record, cmd: PaymentCommand | None = None) -> Reply:
        """Settle a payment left in `processing` from the bank's word, never by guessing:
        an authorization in doubt is reversed (the bank keeps nothing), a capture or a reversal
        in doubt is retransmitted with the same RRN (the bank acts at most once)."""
        phase = row["bank_phase"]
        if phase == "capturing":
            return await self._capture_at_bank(cmd, row)
        if phase == "reversing":
            return await self._reverse_at_bank(cmd, row)
        stan = _reversal_stan(row["auth_stan"])
        request = AcquirerRequest("reversal", stan, row["auth_rrn"], row["amount"], row["currency"],
                                  row["merchant_id"], original=original_of(row))
        outcome: BankOutcome = await self.ports.link.send(request)
        if outcome.status == "unknown":
            return failure(_processing_error_unknown(row))
        return await self._fail(cmd, row, "processing_error", outcome=outcome)

    async def _resume(self, cmd: PaymentCommand, payment_id: str) -> Reply:
        row = await store.load(self.ports.pool, payment_id, cmd.merchant_id)
        if row is None:
            raise NotFound("payment_intent", payment_id)
        if row["status"] == "processing":
            return await self.resolve(row, cmd)
        if cmd.confirm and row["status"] == "requires_confirmation":
            return await self.confirm(replace(cmd, payment_id=payment_id), None)
        reply = ok(row) if not row["last_payment_error"] else _replay_decline(row)
        await idempotency.finish(self.ports.pool, cmd.merchant_id, cmd.idempotency, reply)
        return reply

    # ---- helpers ---------------------------------------------------------------------------
    async def _load(self, cmd: PaymentCommand) -> asyncpg.Record:
        assert cmd.payment_id is not None
        row = await store.load(self.ports.rows, cmd.payment_id, cmd.merchant_id)
        if row is None:
            raise NotFound("payment_intent", cmd.payment_id)
        return row

    async def _payment_method(self, cmd: PaymentCommand, pm_id: str | None = None) -> dict[str, Any]:
        pm_id = pm_id or cmd.payment_method
        assert pm_id is not None
        known = cmd.payment_method_card
        if known is not None and known.get("id") == pm_id:
            return known
        card = await self.ports.vault.get(cmd.merchant_id, pm_id)
        if card is None:
            raise InvalidRequest(f"No such PaymentMethod: '{pm_id}'", code="resource_missing",
                                 param="payment_method")
        return card


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _loads(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return value if isinstance(value, dict) else json.loads(value)


def _charge_card(card: dict[str, Any]) -> dict[str, Any]:
    details = card["card"]
    return {k: details.get(k) for k in CARD_FACTS}


def _outcome(decision: RiskDecision | None, declined: bool = False) -> dict[str, Any]:
    base = decision.as_outcome() if decision else {"risk_level": "normal", "risk_score": 0, "rules": []}
    if declined and not (decision and decision.outcome == "blocked"):
        return {**base, "network_status": "declined_by_network", "type": "issuer_declined"}
    if decision and decision.outcome == "blocked":
        return {**base, "network_status": "not_sent_to_network", "type": "blocked"}
    return {**base, "network_status": "approved_by_network",
            "type": "manual_review" if decision and decision.outcome == "manual_review" else "authorized"}


def _reversal_stan(auth_stan: str) -> str:
    """The STAN of an authorization's reversal: derived, so it needs no sequence round trip, and
    half the STAN space away from the sequence's recent numbers, so it is not in flight already."""
    return f"{(int(auth_stan) + 500_000) % 1_000_000:06d}"


def original_of(payment: Mapping[str, Any]) -> OriginalRef:
    """The payment's first message to the bank, which its capture, refunds and reversal quote: a
    purchase when it was captured automatically."""
    kind: Kind = "purchase" if payment["capture_method"] == "automatic" else "authorize"
    return OriginalRef(payment["auth_stan"], payment["auth_rrn"], payment["auth_code"],
                       payment["auth_transmitted_at"] or "", kind)


def _raw(outcome: BankOutcome) -> dict[str, Any]:
    return dict(outcome.response.raw) if outcome.response else {"detail": outcome.detail}


def _processing_error_unknown(row: asyncpg.Record) -> StripeError:
    return ApiError("The bank did not answer in time; the payment is being resolved with the bank. "
                    "Retrieve the PaymentIntent, or retry with the same Idempotency-Key, for the final status.",
                    code="processing_error", payment_intent={"id": row["id"], "status": row["status"]})


def _replay_decline(row: asyncpg.Record) -> Reply:
    error = _loads(row["last_payment_error"])
    return failure(CardError(error.get("message", "Your card was declined."), code=error.get("code"),
                             decline_code=error.get("decline_code"), charge=row["latest_charge"],
                             payment_intent=payment_intent_object(row)))
