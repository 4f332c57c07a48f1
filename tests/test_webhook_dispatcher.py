"""Where the dispatcher routes the deliveries of a consumed batch: onto a chain, in event order, or
to the ledger's claim (an earlier delivery of the payment pending there, or no free slot). The
rest of the dispatcher runs against the real stack in `test_webhooks.py`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.events.dispatcher import RetryPolicy, WebhookDispatcher


def _delivery(seq: int, payment: str, endpoint: str = "we_1") -> dict[str, Any]:
    return {"event_id": f"evt_{seq}", "endpoint_id": endpoint, "ordering_key": payment, "event_seq": seq}


def _earlier(payment: str, endpoint: str = "we_1") -> dict[str, Any]:
    return {"endpoint_id": endpoint, "ordering_key": payment}


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch) -> WebhookDispatcher:
    """A dispatcher with two delivery slots whose chains hold their queue (nothing is sent)."""
    dispatcher = WebhookDispatcher(0, "postgresql://unused", "unused:9092", RetryPolicy(), concurrency=2)

    async def hold(key: tuple[str, str], chain: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(dispatcher, "_run_chain", hold)
    return dispatcher


def _queued(dispatcher: WebhookDispatcher) -> dict[str, list[int]]:
    return {payment: [d["event_seq"] for d in chain.queue] for (_, payment), chain in dispatcher.chains.items()}


def _to_claim(routed: tuple[list[Any], list[Any]]) -> list[int]:
    return [d["event_seq"] for d in routed[1]]


def test_each_payment_gets_one_chain_in_event_order(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        routed = dispatcher._queue([_delivery(1, "pi_a"), _delivery(2, "pi_b"), _delivery(3, "pi_a")], [])
        assert _to_claim(routed) == []
        assert [d["event_seq"] for d in routed[0]] == [1, 2, 3]
        assert _queued(dispatcher) == {"pi_a": [1, 3], "pi_b": [2]}
        assert len(dispatcher.in_flight) == 2

    asyncio.run(scenario())


def test_an_earlier_delivery_pending_elsewhere_sends_the_payment_to_the_claim(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        routed = dispatcher._queue([_delivery(5, "pi_a"), _delivery(6, "pi_b"), _delivery(7, "pi_a")],
                                   [_earlier("pi_a")])
        assert _to_claim(routed) == [5, 7]
        assert _queued(dispatcher) == {"pi_b": [6]}

    asyncio.run(scenario())


def test_a_payment_with_a_chain_here_joins_it(dispatcher: WebhookDispatcher) -> None:
    """A chain's deliveries are not in the ledger until their first attempt ends, and one that
    fails takes the chain away with it: while the chain is here, the payment's new deliveries
    belong behind it, whatever the ledger holds pending."""
    async def scenario() -> None:
        dispatcher._queue([_delivery(1, "pi_a")], [])
        dispatcher.chains["we_1", "pi_a"].queue.popleft()  # being sent
        assert _to_claim(dispatcher._queue([_delivery(2, "pi_a")], [_earlier("pi_a")])) == []
        assert _queued(dispatcher) == {"pi_a": [2]}
        # The same payment to another endpoint is another queue, held back by what is pending there.
        assert _to_claim(dispatcher._queue([_delivery(3, "pi_a", "we_2")], [_earlier("pi_a", "we_2")])) == [3]

    asyncio.run(scenario())


def test_without_a_free_slot_new_payments_wait_for_the_claim(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        dispatcher._queue([_delivery(1, "pi_a"), _delivery(2, "pi_b")], [])
        routed = dispatcher._queue([_delivery(3, "pi_c"), _delivery(4, "pi_a"), _delivery(5, "pi_c")],
                                   [_earlier("pi_a")])
        assert _to_claim(routed) == [3, 5]  # no slot for a third chain
        assert _queued(dispatcher) == {"pi_a": [1, 4], "pi_b": [2]}  # an existing chain takes no new slot

    asyncio.run(scenario())
