"""AcquirerLink: the actor that owns the connections to the bank.

It is one of only two places a PAN exists in memory (the vault is the other): it asks the vault
to detokenize right before an authorization and forgets the card when the call returns. What it
returns is a `BankOutcome` with no card data in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import ray

from actors.acquirer.adapter import AcquirerAdapter
from actors.acquirer.iso_adapter import Iso8583Adapter
from actors.acquirer.messages import (
    AcquirerError,
    AcquirerRequest,
    AcquirerResponse,
    AcquirerTimeout,
    AcquirerUnavailable,
    Kind,
    OriginalRef,
    format_transmitted_at,
)
from actors.batching import Batcher, gather_outcomes
from actors.direct import DirectCallable, DirectClient

log = logging.getLogger("paygate.acquirer.link")

OutcomeStatus = Literal["approved", "declined", "failed", "unknown"]


@dataclass(frozen=True)
class BankOutcome:
    """approved/declined: the bank answered. failed: nothing was charged (never sent, or sent and
    reversed). unknown: the bank may have acted and we could not settle it; resolve from durable state."""

    status: OutcomeStatus
    response: AcquirerResponse | None
    transmitted_at: str
    detail: str = ""
    capture: BankOutcome | None = None  # an approved purchase: the capture made with the authorization


@dataclass(frozen=True)
class AuthorizeOrder:
    payment_id: str
    token: str
    amount: int
    currency: str
    merchant_id: str
    stan: str
    rrn: str
    reversal_stan: str
    capture_rrn: str | None = None  # automatic capture: the RRN its capture is to be known by (a purchase)


class AcquirerLink(DirectCallable):
    DIRECT_METHODS = frozenset({"authorize_many", "send_many"})

    def __init__(self, host: str, port: int, connections: int, timeout_s: float, vault_name: str,
                 namespace: str, adapter: AcquirerAdapter | None = None) -> None:
        self.adapter: AcquirerAdapter = adapter or Iso8583Adapter(host, port, connections, timeout_s)
        self.vault_name = vault_name
        self.namespace = namespace
        self.detokenizer: Batcher[tuple[str, str, str], Any] | None = None
        self.started = False

    async def start(self) -> None:
        if self.started:
            return
        await self.adapter.start()
        vault = ray.get_actor(self.vault_name, namespace=self.namespace)
        self.detokenizer = Batcher(_detokenize_many(DirectClient(vault)))
        self.started = True

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def echo(self) -> str:
        await self.start()
        now = datetime.now(UTC)
        stan = f"{now.microsecond % 1_000_000:06d}"
        response = await self.adapter.handle(AcquirerRequest(
            "echo", stan, f"E{stan}{now.second:02d}{now.minute:03d}"[:12], 0, "usd", "PAYGATE"))
        if not response.approved:
            raise RuntimeError(f"echo answered {response.response_code}")
        return "ok"

    async def authorize(self, order: AuthorizeOrder) -> BankOutcome:
        """0100 for the card behind `order.token`; on a timeout, reverse it so nothing stays held.
        With `order.capture_rrn`, a purchase (0200) instead: one message that the bank approves as
        authorized and captured, its capture known by that RRN."""
        await self.start()
        assert self.detokenizer is not None
        card = await self.detokenizer.call((order.token, "acquirer-link", f"authorize {order.payment_id}"))
        sent_at = format_transmitted_at(datetime.now(UTC))
        kind: Kind = "purchase" if order.capture_rrn else "authorize"
        request = AcquirerRequest(kind, order.stan, order.rrn, order.amount, order.currency, order.merchant_id,
                                  card=card, transmitted_at=sent_at, capture_rrn=order.capture_rrn)
        del card
        try:
            response = await self.adapter.handle(request)
        except AcquirerUnavailable as error:
            return BankOutcome("failed", None, sent_at, f"not sent: {error}")
        except AcquirerTimeout:
            original = OriginalRef(order.stan, order.rrn, None, sent_at, kind)
            reversal = AcquirerRequest("reversal", order.reversal_stan, order.rrn, order.amount, order.currency,
                                       order.merchant_id, original=original)
            settled = await self.send(reversal, retransmits=2)
            if settled.status in ("approved", "declined"):
                return BankOutcome("failed", settled.response, sent_at, "timed out; reversal sent")
            return BankOutcome("unknown", None, sent_at, "timed out; reversal unconfirmed")
        outcome = BankOutcome("approved" if response.approved else "declined", response, sent_at)
        if response.approved and order.capture_rrn:
            outcome = replace(outcome, capture=outcome)  # the purchase's approval is the capture's too
        return outcome

    async def authorize_many(self, orders: list[AuthorizeOrder]) -> list[BankOutcome | BaseException]:
        return await gather_outcomes([self.authorize(order) for order in orders])

    async def send_many(self, requests: list[AcquirerRequest]) -> list[BankOutcome | BaseException]:
        return await gather_outcomes([self.send(request) for request in requests])

    async def send(self, request: AcquirerRequest, retransmits: int = 2) -> BankOutcome:
        """A card-less message (capture, refund, reversal). A timeout is retried as a retransmission
        (same STAN and RRN, so the bank acts at most once); still no answer is `unknown`."""
        await self.start()
        sent_at = request.transmitted_at or format_transmitted_at(datetime.now(UTC))
        request = replace(request, transmitted_at=sent_at)
        for attempt in range(retransmits + 1):
            try:
                response = await self.adapter.handle(request)
                return BankOutcome("approved" if response.approved else "declined", response, sent_at)
            except AcquirerUnavailable as error:
                if attempt == retransmits:
                    return BankOutcome("failed", None, sent_at, f"not sent: {error}")
            except AcquirerError as error:
                log.warning("acquirer %s rrn=%s attempt %d: %s", request.kind, request.rrn, attempt + 1, error)
        return BankOutcome("unknown", None, sent_at, "no answer after retransmissions")


def _detokenize_many(vault: DirectClient) -> Any:
    async def call(requests: list[tuple[str, str, str]]) -> list[Any]:
        cards = await vault.call("detokenize_many", requests)
        return [card if card is not None else LookupError("No such payment method.") for card in cards]

    return call


AcquirerLinkActor = ray.remote(AcquirerLink)
