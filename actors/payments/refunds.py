"""The refund operation: full or partial, several per payment, each its own 0200 (processing
code 20) to the bank pointing at the original authorization.

Runs under the payment's lock in its shard, so concurrent refunds of one payment are decided one
at a time against `amount_received - amount_refunded - pending refunds`: refunded never exceeds
captured. A bank timeout leaves the refund `pending`; the recovery sweep retransmits it with the
same STAN and RRN, so the bank refunds at most once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import asyncpg

from actors.acquirer.link import BankOutcome
from actors.acquirer.messages import AcquirerRequest, OriginalRef
from actors.errors import InvalidRequest, NotFound
from actors.ids import new_id
from actors.payments import idempotency, store
from actors.payments.messages import PaymentCommand, Reply
from actors.payments.operations import Ports, failure
from actors.payments.render import charge_object, dumps, event_object


def refund_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "refund", "amount": row["amount"], "balance_transaction": None,
        "charge": row["charge_id"], "created": row["created"], "currency": row["currency"],
        "destination_details": {"type": "card", "card": {"type": "refund"}},
        "failure_reason": row["failure_reason"], "metadata": row["metadata"] or {},
        "payment_intent": row["payment_id"], "reason": row["reason"], "receipt_number": None,
        "source_transfer_reversal": None, "status": row["status"], "transfer_reversal": None,
    }


async def refund_outbox(conn: asyncpg.Connection, refund: asyncpg.Record, types: list[str],
                        payment: asyncpg.Record | None = None) -> None:
    obj = refund_object(refund)
    events = [event_object(t, obj) for t in types]
    if payment is not None:
        events.append(event_object("charge.refunded", charge_object(payment) or {}))
    await store.append_outbox(conn, refund["merchant_id"], refund["payment_id"], events)


async def book_refund(conn: asyncpg.Connection, refund: asyncpg.Record,
                      bank: dict[str, Any]) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Book a refund the bank has made: the refund, the payment's refunded amount, the audit event,
    the double entry and the events. The one place this is written, whoever learnt of the refund
    (the bank's answer, or the reconciler from the settlement file)."""
    refund = await conn.fetchrow(
        "UPDATE refunds SET status = 'succeeded', updated_at = now() WHERE id = $1 AND status = 'pending' "
        "RETURNING *", refund["id"])
    payment = await conn.fetchrow(
        "UPDATE payment_orders SET amount_refunded = amount_refunded + $2, version = version + 1 "
        "WHERE id = $1 RETURNING *", refund["payment_id"], refund["amount"])
    await store.append_event(conn, payment, "refund.succeeded", payment["status"], {"refund": refund["id"], **bank})
    await store.write_ledger(conn, payment, [("merchant_balance", refund["amount"]),
                                             ("acquirer_receivable", -refund["amount"])], f"refund {refund['id']}")
    await refund_outbox(conn, refund, ["refund.updated"], payment=payment)
    return refund, payment


class Refunds:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    async def refund(self, cmd: PaymentCommand, recovery_point: str | None) -> Reply:
        pool = self.ports.pool
        if recovery_point:
            existing = await pool.fetchrow("SELECT * FROM refunds WHERE id = $1", recovery_point)
            if existing is not None:
                return await self._settle(cmd, existing)
        assert cmd.payment_id is not None
        [(stan, rrn)] = await self.ports.bank_ids.take()  # before holding a connection (see BankIds)
        async with pool.acquire() as conn, conn.transaction():
            payment = await store.load(conn, cmd.payment_id, cmd.merchant_id)
            if payment is None:
                raise NotFound("payment_intent", cmd.payment_id, param="payment_intent")
            amount = await self._refundable(conn, payment, cmd.amount)
            refund = await conn.fetchrow(
                "INSERT INTO refunds (id, merchant_id, payment_id, charge_id, amount, currency, status, reason, "
                "metadata, stan, rrn, created) VALUES ($1,$2,$3,$4,$5,$6,'pending',$7,$8,$9,$10,$11) RETURNING *",
                new_id("re"), cmd.merchant_id, payment["id"], payment["latest_charge"], amount,
                payment["currency"], cmd.refund_reason, cmd.metadata, stan, rrn, int(time.time()))
            await store.append_event(conn, payment, "refund.created", payment["status"],
                                     {"refund": refund["id"], "amount": amount})
            await refund_outbox(conn, refund, ["refund.created"])
            await idempotency.set_recovery_point(conn, cmd.merchant_id, cmd.idempotency, refund["id"])
        return await self._settle(cmd, refund)

    async def _refundable(self, conn: asyncpg.Connection, payment: asyncpg.Record, wanted: int | None) -> int:
        if payment["status"] != "succeeded" or payment["amount_received"] == 0:
            raise InvalidRequest(
                f"This PaymentIntent ({payment['id']}) does not have a successful charge to refund "
                f"(status {payment['status']}).", code="charge_not_refundable", param="payment_intent")
        pending = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM refunds WHERE payment_id = $1 AND status = 'pending'",
            payment["id"])
        remaining = payment["amount_received"] - payment["amount_refunded"] - pending
        if remaining <= 0:
            raise InvalidRequest(f"Charge {payment['latest_charge']} has already been refunded.",
                                 code="charge_already_refunded", param="payment_intent")
        amount = remaining if wanted is None else wanted
        if amount > remaining:
            raise InvalidRequest(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
                code="amount_too_large", param="amount")
        return amount

    async def _settle(self, cmd: PaymentCommand | None, refund: asyncpg.Record) -> Reply:
        """Send (or retransmit) the refund to the bank and apply its answer."""
        if refund["status"] != "pending":
            return Reply(200, dumps(refund_object(refund)))
        payment = await self.ports.pool.fetchrow("SELECT * FROM payment_orders WHERE id = $1", refund["payment_id"])
        assert payment is not None
        request = AcquirerRequest(
            "refund", refund["stan"], refund["rrn"], refund["amount"], refund["currency"], refund["merchant_id"],
            original=OriginalRef(payment["auth_stan"], payment["auth_rrn"], payment["auth_code"],
                                 payment["auth_transmitted_at"] or ""))
        outcome: BankOutcome = await self.ports.link.send(request)
        idem = cmd.idempotency if cmd else None
        if outcome.status == "unknown":
            reply = Reply(200, dumps(refund_object(refund)))  # pending: the sweep settles it
            if cmd:
                await idempotency.finish(self.ports.pool, refund["merchant_id"], idem, reply)
            return reply
        async with self.ports.pool.acquire() as conn, conn.transaction():
            if outcome.status == "approved":
                refund, payment = await self._succeeded(conn, refund, outcome)
            else:
                refund = await self._failed(conn, refund, outcome)
            reply = Reply(200, dumps(refund_object(refund)))
            await idempotency.finish(conn, refund["merchant_id"], idem, reply)
        return reply

    async def _succeeded(self, conn: asyncpg.Connection, refund: asyncpg.Record,
                         outcome: BankOutcome) -> tuple[asyncpg.Record, asyncpg.Record]:
        return await book_refund(conn, refund, dict(outcome.response.raw) if outcome.response else {})

    async def _failed(self, conn: asyncpg.Connection, refund: asyncpg.Record,
                      outcome: BankOutcome) -> asyncpg.Record:
        code = outcome.response.decline_code if outcome.response else None
        refund = await conn.fetchrow(
            "UPDATE refunds SET status = 'failed', failure_reason = $2, updated_at = now() "
            "WHERE id = $1 AND status = 'pending' RETURNING *", refund["id"], code or "unknown")
        payment = await conn.fetchrow("SELECT * FROM payment_orders WHERE id = $1", refund["payment_id"])
        await store.append_event(conn, payment, "refund.failed", payment["status"],
                                 {"refund": refund["id"], **(outcome.response.raw if outcome.response else {})})
        await refund_outbox(conn, refund, ["refund.failed"])
        return refund

    async def resolve_pending(self, refund: asyncpg.Record) -> Reply:
        return await self._settle(None, refund)


__all__ = ["Refunds", "book_refund", "failure", "refund_object", "refund_outbox"]
