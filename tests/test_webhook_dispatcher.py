"""Where the dispatcher routes deliveries it has just recorded: onto a chain, in event order, or to
the ledger's claim (an earlier delivery of the payment pending elsewhere, or no free slot). The
rest of the dispatcher runs against the real stack in `test_webhooks.py`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.events.dispatcher import RetryPolicy, WebhookDispatcher


def _delivery(id_: int, payment: str, endpoint: str = "we_1") -> dict[str, Any]:
    return {"id": id_, "endpoint_id": endpoint, "ordering_key": payment, "event_seq": id_}


def _earlier(id_: int, payment: str, endpoint: str = "we_1") -> dict[str, Any]:
    return {"id": id_, "endpoint_id": endpoint, "ordering_key": payment}


@pytest.fixture
def dispatcher(monkeypatch: pytest.MonkeyPatch) -> WebhookDispatcher:
    """A dispatcher with two delivery slots whose chains hold their queue (nothing is sent)."""
    dispatcher = WebhookDispatcher(0, "postgresql://unused", "unused:9092", RetryPolicy(), concurrency=2)

    async def hold(key: tuple[str, str], chain: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(dispatcher, "_run_chain", hold)
    return dispatcher


def _queued(dispatcher: WebhookDispatcher) -> dict[str, list[int]]:
    return {payment: [d["id"] for d in chain.queue] for (_, payment), chain in dispatcher.chains.items()}


def test_each_payment_gets_one_chain_in_event_order(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        released = dispatcher._queue([_delivery(1, "pi_a"), _delivery(2, "pi_b"), _delivery(3, "pi_a")], [])
        assert released == []
        assert _queued(dispatcher) == {"pi_a": [1, 3], "pi_b": [2]}
        assert len(dispatcher.in_flight) == 2

    asyncio.run(scenario())


def test_an_earlier_delivery_pending_elsewhere_sends_the_payment_to_the_claim(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        released = dispatcher._queue([_delivery(5, "pi_a"), _delivery(6, "pi_b"), _delivery(7, "pi_a")],
                                     [_earlier(1, "pi_a")])
        assert released == [5, 7]
        assert _queued(dispatcher) == {"pi_b": [6]}

    asyncio.run(scenario())


def test_an_earlier_delivery_on_this_chain_lets_the_next_join_it(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        dispatcher._queue([_delivery(1, "pi_a")], [])
        dispatcher.chains["we_1", "pi_a"].queue.popleft()  # being sent: pending, still known to the chain
        released = dispatcher._queue([_delivery(2, "pi_a")], [_earlier(1, "pi_a")])
        assert released == []
        assert _queued(dispatcher) == {"pi_a": [2]}
        # The same payment to another endpoint is another queue.
        assert dispatcher._queue([_delivery(3, "pi_a", "we_2")], [_earlier(1, "pi_a")]) == []

    asyncio.run(scenario())


def test_without_a_free_slot_new_payments_wait_for_the_claim(dispatcher: WebhookDispatcher) -> None:
    async def scenario() -> None:
        dispatcher._queue([_delivery(1, "pi_a"), _delivery(2, "pi_b")], [])
        released = dispatcher._queue([_delivery(3, "pi_c"), _delivery(4, "pi_a"), _delivery(5, "pi_c")],
                                     [_earlier(1, "pi_a")])
        assert released == [3, 5]  # no slot for a third chain
        assert _queued(dispatcher) == {"pi_a": [1, 4], "pi_b": [2]}  # an existing chain takes no new slot

    asyncio.run(scenario())


def test_an_earlier_delivery_this_dispatcher_recorded_no_longer_holds_the_payment(
        dispatcher: WebhookDispatcher) -> None:
    """The check for earlier pending deliveries reads a snapshot taken before the new events are
    queued: a delivery this dispatcher recorded as delivered meanwhile (its chain ended) may still
    look pending there. It does not send the payment's next event to the claim."""
    async def scenario() -> None:
        dispatcher._remember_delivered([1])
        released = dispatcher._queue([_delivery(2, "pi_a")], [_earlier(1, "pi_a")])
        assert released == []
        assert _queued(dispatcher) == {"pi_a": [2]}
        # One still pending besides it does hold the payment back.
        assert dispatcher._queue([_delivery(4, "pi_b")], [_earlier(1, "pi_b"), _earlier(3, "pi_b")]) == [4]

    asyncio.run(scenario())


def test_the_recently_delivered_are_kept_up_to_a_bound(dispatcher: WebhookDispatcher,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("actors.events.dispatcher.DELIVERED_KEPT", 3)
    dispatcher._remember_delivered([1, 2])
    dispatcher._remember_delivered([3, 4, 5])
    assert list(dispatcher.delivered) == [3, 4, 5]
