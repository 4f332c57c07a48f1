"""The refund operation: full or partial, several per payment, each its own 0200 (processing
code 20) to the bank pointing at the original authorization.

Runs under the payment's lock in its shard, so concurrent refunds of one payment are decided one
at a time against `amount_received - amount_refunded - pending refunds`: refunded never exceeds
captured. A bank timeout leaves the refund `pending`; the recovery sweep retransmits it with the
same STAN and RRN, so the bank refunds at most once.

Each write is one statement written for many rows, like a payment's transitions (`store`): the
refund with its payment event, outbox event and the key's recovery point; then its outcome with
the payment's refunded amount, the double entry, the events and the key's stored reply. The
shard's RowBatcher merges the refunds of one shape that queue up into one execution.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from actors.acquirer.link import BankOutcome
from actors.acquirer.messages import AcquirerRequest
from actors.errors import InvalidRequest, NotFound
from actors.ids import new_id
from actors.payments import idempotency, store
from actors.payments.messages import Idempotency, PaymentCommand, Reply
from actors.payments.operations import Ports, failure, original_of
from actors.payments.render import charge_object, dumps, event_object

# The bank's decline code -> the refund's failure_reason, among the values Stripe gives it.
_FAILURE_REASONS = {"lost_card": "lost_or_stolen_card", "stolen_card": "lost_or_stolen_card",
                    "expired_card": "expired_or_canceled_card", "insufficient_funds": "insufficient_funds"}

BOOK_ATTEMPTS = 3  # an outcome meets a payment moved on (another refund booked from the settlement file)

# refunds' columns as a refund is created, and their types: a column of many rows is one array.
_COLUMNS: dict[str, str] = {
    "id": "text", "merchant_id": "text", "payment_id": "text", "charge_id": "text", "amount": "bigint",
    "currency": "text", "status": "text", "reason": "text", "metadata": "jsonb", "stan": "text", "rrn": "text",
    "created": "bigint",
}

# The payment with the sum of its refunds still pending (reserved: a pending refund may yet succeed).
_LOAD = ("SELECT p.*, (SELECT coalesce(sum(r.amount), 0)::bigint FROM refunds r "
         "WHERE r.payment_id = p.id AND r.status = 'pending') AS pending_refunds "
         "FROM unnest($1::text[], $2::text[]) AS x(id, merchant_id) "
         "JOIN payment_orders p ON p.id = x.id AND p.merchant_id = x.merchant_id")

# The payments of the refunds written (`rf`), for the events' and the ledger's joins.
_THEIR_PAYMENTS = "u AS (SELECT DISTINCT payment_id AS id, merchant_id FROM rf)"

_CREATE = (f"WITH rf AS (INSERT INTO refunds ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
           + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_COLUMNS.values(), start=1))
           + f") RETURNING *), {_THEIR_PAYMENTS}")

# Succeeded: the refund (still pending) and its payment (still at the version its events were
# rendered from) locked, then both moved. No row back when either changed: nothing is written.
_SUCCEEDED = (
    "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::integer[]) AS x(id, payment_id, version)), "
    "ok AS (SELECT x.*, r.amount FROM x JOIN refunds r ON r.id = x.id AND r.status = 'pending' "
    "JOIN payment_orders p ON p.id = x.payment_id AND p.version = x.version FOR UPDATE OF r, p), "
    "u AS (UPDATE payment_orders p SET amount_refunded = p.amount_refunded + ok.amount, version = p.version + 1 "
    "FROM ok WHERE p.id = ok.payment_id AND p.version = ok.version RETURNING p.*), "
    "rf AS (UPDATE refunds r SET status = 'succeeded', updated_at = now() FROM ok JOIN u ON u.id = ok.payment_id "
    "WHERE r.id = ok.id RETURNING r.*)")

_FAILED = (
    "WITH rf AS (UPDATE refunds r SET status = 'failed', failure_reason = x.reason, updated_at = now() "
    "FROM unnest($1::text[], $2::text[]) AS x(id, reason) WHERE r.id = x.id AND r.status = 'pending' "
    f"RETURNING r.*), {_THEIR_PAYMENTS}")


def refund_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "refund", "amount": row["amount"], "balance_transaction": None,
        "charge": row["charge_id"], "created": row["created"], "currency": row["currency"],
        "destination_details": {"type": "card", "card": {"type": "refund"}},
        "failure_reason": row["failure_reason"], "metadata": row["metadata"] or {},
        "payment_intent": row["payment_id"], "reason": row["reason"], "receipt_number": None,
        "source_transfer_reversal": None, "status": row["status"], "transfer_reversal": None,
    }


def _statement(head: str, args: list[Any], refund: Mapping[str, Any], payment: Mapping[str, Any], event: str,
               data: Mapping[str, Any], outbox: list[dict[str, Any]], ledger: bool = False,
               recovery: Idempotency | None = None,
               finish: tuple[Idempotency, Reply] | None = None) -> tuple[str, list[Any]]:
    """`head` (CTEs `rf`, the refunds written, and `u`, their payments) with the payment event,
    the outbox events, and when asked the double entry and the key's recovery point or reply,
    each joined to the rows actually written."""
    status = payment["status"]
    history = [store.PaymentEvent(event, status, status, {"refund": refund["id"], **data})]
    sql = head + store.event_and_outbox_sql("u", len(args) + 1)
    args = args + store.event_and_outbox_args(payment["id"], history, outbox)
    if ledger:
        sql += store.ledger_sql("u", len(args) + 1)
        args += store.ledger_args(payment["id"], new_id("txn"), f"refund {refund['id']}",
                                  [("merchant_balance", refund["amount"]), ("acquirer_receivable", -refund["amount"])])
    if recovery is not None:
        recovery_sql, recovery_args = idempotency.recovery_point_sql(
            refund["merchant_id"], recovery, refund["id"], len(args) + 1, only_if="rf")
        sql += f", k AS ({recovery_sql})"
        args += recovery_args
    if finish is not None:
        finish_sql, finish_args = idempotency.finish_sql(refund["merchant_id"], *finish, len(args) + 1,
                                                         owner=("rf", refund["id"]))
        sql += f", k AS ({finish_sql})"
        args += finish_args
    return sql + " SELECT * FROM rf", args


async def create_refund(writer: store.Writer, refund: Mapping[str, Any], payment: Mapping[str, Any],
                        recovery: Idempotency | None) -> Mapping[str, Any]:
    """A new pending refund, its payment event and `refund.created`: one statement."""
    args = [[refund[column]] for column in _COLUMNS]
    data = {"amount": refund["amount"]}
    outbox = [event_object("refund.created", refund_object(refund))]
    sql, args = _statement(_CREATE, args, refund, payment, "refund.created", data, outbox, recovery=recovery)
    row = await writer.fetchrow(sql, *args)
    assert row is not None
    return row


async def book_refund(writer: store.Writer, refund: Mapping[str, Any], payment: Mapping[str, Any],
                      bank: Mapping[str, Any], finish: tuple[Idempotency, Reply] | None = None
                      ) -> Mapping[str, Any] | None:
    """Book a refund the bank has made: the refund, the payment's refunded amount, the audit event,
    the double entry and the events — and the key's reply, when given — in one statement. The one
    place this is written, whoever learnt of the refund (the bank's answer, or the reconciler from
    the settlement file). None, with nothing written, when the refund is no longer pending or the
    payment moved past `payment`'s version."""
    booked = {**refund, "status": "succeeded"}
    moved = {**payment, "amount_refunded": payment["amount_refunded"] + refund["amount"]}
    outbox = [event_object("refund.updated", refund_object(booked)),
              event_object("charge.refunded", charge_object(moved) or {})]
    args: list[Any] = [[refund["id"]], [payment["id"]], [payment["version"]]]
    sql, args = _statement(_SUCCEEDED, args, refund, payment, "refund.succeeded", bank, outbox, ledger=True,
                           finish=finish)
    return await writer.fetchrow(sql, *args)


async def _fail_refund(writer: store.Writer, refund: Mapping[str, Any], payment: Mapping[str, Any], reason: str,
                       bank: Mapping[str, Any], finish: tuple[Idempotency, Reply] | None) -> Mapping[str, Any] | None:
    """A refund the bank declined, its audit event and `refund.failed`: one statement. None, with
    nothing written, when the refund is no longer pending."""
    failed = {**refund, "status": "failed", "failure_reason": reason}
    outbox = [event_object("refund.failed", refund_object(failed))]
    args: list[Any] = [[refund["id"]], [reason]]
    sql, args = _statement(_FAILED, args, refund, payment, "refund.failed", bank, outbox, finish=finish)
    return await writer.fetchrow(sql, *args)


def failure_reason(decline_code: str | None) -> str:
    return _FAILURE_REASONS.get(decline_code, "declined") if decline_code else "unknown"


def _refundable(payment: Mapping[str, Any], wanted: int | None) -> int:
    if payment["status"] != "succeeded" or payment["amount_received"] == 0:
        raise InvalidRequest(
            f"This PaymentIntent ({payment['id']}) does not have a successful charge to refund "
            f"(status {payment['status']}).", code="charge_not_refundable", param="payment_intent")
    remaining = payment["amount_received"] - payment["amount_refunded"] - payment["pending_refunds"]
    if remaining <= 0:
        raise InvalidRequest(f"Charge {payment['latest_charge']} has already been refunded.",
                             code="charge_already_refunded", param="payment_intent")
    amount = remaining if wanted is None else wanted
    if amount > remaining:
        raise InvalidRequest(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
            code="amount_too_large", param="amount")
    return amount


class Refunds:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    async def refund(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        if recovery_point:
            existing = await self.ports.pool.fetchrow("SELECT * FROM refunds WHERE id = $1", recovery_point)
            if existing is not None:
                return await self._settle(cmd, existing)
        assert cmd.payment_id is not None
        [(stan, rrn)] = await self.ports.bank_ids.take()
        payment = await self.ports.rows.fetchrow(_LOAD, [cmd.payment_id], [cmd.merchant_id])
        if payment is None:
            raise NotFound("payment_intent", cmd.payment_id, param="payment_intent")
        refund = {
            "id": new_id("re"), "merchant_id": cmd.merchant_id, "payment_id": payment["id"],
            "charge_id": payment["latest_charge"], "amount": _refundable(payment, cmd.amount),
            "currency": payment["currency"], "status": "pending", "reason": cmd.refund_reason,
            "metadata": cmd.metadata, "stan": stan, "rrn": rrn, "created": int(time.time()), "failure_reason": None,
        }
        created = await create_refund(self.ports.rows, refund, payment, cmd.idempotency)
        return await self._settle(cmd, created, payment)

    async def _settle(self, cmd: PaymentCommand | None, refund: Mapping[str, Any],
                      payment: Mapping[str, Any] | None = None) -> Reply:
        """Send (or retransmit) the refund to the bank and apply its answer."""
        if refund["status"] != "pending":
            return Reply(200, dumps(refund_object(refund)))
        payment = payment or await self._payment(refund)
        request = AcquirerRequest(
            "refund", refund["stan"], refund["rrn"], refund["amount"], refund["currency"], refund["merchant_id"],
            original=original_of(payment))
        outcome: BankOutcome = await self.ports.link.send(request)
        idem = cmd.idempotency if cmd else None
        if outcome.status == "unknown":
            reply = Reply(200, dumps(refund_object(refund)))  # pending: the sweep settles it
            await idempotency.finish(self.ports.pool, refund["merchant_id"], idem, reply)
            return reply
        return await self._apply(outcome, refund, payment, idem)

    async def _apply(self, outcome: BankOutcome, refund: Mapping[str, Any], payment: Mapping[str, Any],
                     idem: Idempotency | None) -> Reply:
        """Write the bank's answer with the key's reply; a refund someone else settled meanwhile (the
        reconciler, from the settlement file) is answered as it stands."""
        bank = dict(outcome.response.raw) if outcome.response else {}
        for _ in range(BOOK_ATTEMPTS):
            if outcome.status == "approved":
                reply = Reply(200, dumps(refund_object({**refund, "status": "succeeded"})))
                written = await book_refund(self.ports.rows, refund, payment, bank, _finish(idem, reply))
            else:
                reason = failure_reason(outcome.response.decline_code if outcome.response else None)
                reply = Reply(200, dumps(refund_object({**refund, "status": "failed", "failure_reason": reason})))
                written = await _fail_refund(self.ports.rows, refund, payment, reason, bank, _finish(idem, reply))
            if written is not None:
                return reply
            fresh = await self.ports.pool.fetchrow("SELECT * FROM refunds WHERE id = $1", refund["id"])
            assert fresh is not None
            if fresh["status"] != "pending":
                reply = Reply(200, dumps(refund_object(fresh)))
                await idempotency.finish(self.ports.pool, refund["merchant_id"], idem, reply)
                return reply
            refund, payment = fresh, await self._payment(fresh)
        raise store.VersionConflict(payment["id"])  # still pending: the recovery sweep books it

    async def _payment(self, refund: Mapping[str, Any]) -> Mapping[str, Any]:
        payment = await store.load(self.ports.rows, refund["payment_id"], refund["merchant_id"])
        assert payment is not None
        return payment

    async def resolve_pending(self, refund: Mapping[str, Any]) -> Reply:
        return await self._settle(None, refund)


def _finish(idem: Idempotency | None, reply: Reply) -> tuple[Idempotency, Reply] | None:
    return (idem, reply) if idem else None


__all__ = ["Refunds", "book_refund", "create_refund", "failure", "failure_reason", "refund_object"]
