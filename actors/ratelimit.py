"""Per-merchant token buckets shared by every gateway process.

Gateways lease a few tokens at a time (see gateway/ratelimit.py) so a request costs a Ray call
only once per lease; the bucket itself lives here, in one named actor, which is what makes the
limit consistent across several gateway processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Lease:
    granted: int
    retry_after_s: float
    rate_per_s: float = 0.0  # the merchant's limit, so the gateway can size its next lease


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.buckets: dict[str, _Bucket] = {}
        self.overrides: dict[str, tuple[float, int]] = {}

    def configure(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self.buckets.clear()

    def set_merchant_limit(self, merchant_id: str, rate_per_s: float, burst: int) -> None:
        """An operator's per-merchant limit, replacing the default for that merchant."""
        self.overrides[merchant_id] = (rate_per_s, burst)
        self.buckets.pop(merchant_id, None)

    def acquire(self, merchant_id: str, wanted: int, now: float | None = None) -> Lease:
        """Take up to `wanted` tokens; when none are left say how long until one is."""
        now = time.monotonic() if now is None else now
        rate, burst = self.overrides.get(merchant_id, (self.rate, self.burst))
        bucket = self.buckets.get(merchant_id)
        if bucket is None:
            bucket = self.buckets[merchant_id] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        granted = min(wanted, int(bucket.tokens))
        bucket.tokens -= granted
        if granted:
            return Lease(granted, 0.0, rate)
        return Lease(0, (1.0 - bucket.tokens) / rate, rate)

    def acquire_many(self, requests: list[tuple[str, int]]) -> list[Lease]:
        now = time.monotonic()
        return [self.acquire(merchant, wanted, now) for merchant, wanted in requests]

    def ping(self) -> str:
        return "ok"


RateLimiterActor = ray.remote(RateLimiter)
