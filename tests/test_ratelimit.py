"""gateway/ratelimit.py: local tokens leased from the RateLimiter's buckets (the plain class here,
called as the actor would be); the 429 over HTTP is in test_foundation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from actors.ratelimit import RateLimiter
from gateway.errors import RateLimited
from gateway.ratelimit import RateLimitClient


class _Method:
    """`actor.method.remote(...)`: an awaitable answer, each call recorded."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        self.calls.append(args)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.set_result(self.method(*args))
        return answer


class _Limiter:
    def __init__(self, limiter: RateLimiter) -> None:
        self.acquire = _Method(limiter.acquire)


def _spend(client: RateLimitClient, merchant: str, requests: int) -> None:
    async def run() -> None:
        for _ in range(requests):
            await client.check(merchant)

    asyncio.run(run())


def test_a_lease_is_a_twentieth_of_a_second_of_the_merchants_rate() -> None:
    limiter = _Limiter(RateLimiter(rate_per_s=100, burst=100))
    client = RateLimitClient(limiter, rate_per_s=100)
    _spend(client, "acct_a", 12)
    assert [wanted for _, wanted in limiter.acquire.calls] == [5, 5, 5]  # 100/s: 5 tokens a lease
    assert client.tokens["acct_a"] == 3


def test_a_merchant_allowed_much_more_takes_few_large_leases() -> None:
    limiter = _Limiter(RateLimiter(rate_per_s=1_000_000, burst=1_000_000))
    client = RateLimitClient(limiter, rate_per_s=100)
    _spend(client, "acct_big", 3_000)
    wanted = [w for _, w in limiter.acquire.calls]
    assert wanted[0] == 5  # sized from the default until the limiter says the merchant's own rate
    assert wanted[1:] == [1024] * 3, wanted  # then capped: the slack one gateway process may hold


def test_no_token_left_is_a_429_with_when_to_retry() -> None:
    limiter = _Limiter(RateLimiter(rate_per_s=1, burst=2))
    client = RateLimitClient(limiter, rate_per_s=1)
    _spend(client, "acct_slow", 2)
    with pytest.raises(RateLimited) as raised:
        _spend(client, "acct_slow", 1)
    assert raised.value.status == 429
    assert 0 < float(raised.value.headers["Retry-After"]) <= 2
