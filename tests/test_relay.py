"""The outbox relay's pacing: caught up, it polls once per interval; behind, at once.

Delivery itself (every event published, in order, again after a broker loss) is tested against the
real stack in test_webhooks.py; here `relay_once` is replaced so that only the loop around it runs."""

from __future__ import annotations

import asyncio
import itertools

from actors.events.relay import POLL_INTERVAL_S, OutboxRelay


def _poll_times(batches: list[int], batch_size: int) -> list[float]:
    """When the relay loop polled, for polls that found `batches` rows in turn."""
    relay = OutboxRelay(0, 1, "postgresql://nobody@127.0.0.1:1/none", "127.0.0.1:1", batch_size=batch_size)

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        polls: list[float] = []
        done = loop.create_future()

        async def relay_once() -> int:
            polls.append(loop.time())
            if len(polls) == len(batches):
                done.set_result(None)
            return batches[min(len(polls), len(batches)) - 1]

        relay.relay_once = relay_once  # type: ignore[method-assign]
        task = loop.create_task(relay._run())
        await asyncio.wait_for(done, 5)
        task.cancel()
        return polls

    return asyncio.run(run())


def test_a_caught_up_relay_waits_out_the_interval_and_one_behind_polls_at_once() -> None:
    polls = _poll_times([3, 10, 10, 0, 1, 0], batch_size=10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    after_partial, after_full, after_full_again, after_empty, after_one = gaps
    assert min(after_partial, after_empty, after_one) >= 0.9 * POLL_INTERVAL_S, gaps
    assert max(after_full, after_full_again) < POLL_INTERVAL_S / 2, gaps
