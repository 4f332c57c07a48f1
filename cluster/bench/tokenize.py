"""Tokenization throughput through HTTP: `POST /v1/payment_methods` with distinct Luhn-valid cards.

    python -m cluster.bench.tokenize --url URL --key sk_test_… --count 2000 --concurrency 32
    python -m cluster.bench.tokenize --count 2000            # starts (and stops) its own local stack

Against a running stack the merchant's rate limit applies (a 429 counts as a failure); give
`--admin-key` instead of `--key` to bench as a fresh merchant whose limit is raised first. Without
`--url` a local stack is started in a temporary data dir with rate limiting effectively off.
Prints tokenizations/s and the p50/p90/p99 latency of the measured requests (after a warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from cluster.logs import luhn_complete

YEAR = time.gmtime().tm_year + 3
_UNLIMITED = {"PAYGATE_RATE_LIMIT": "1000000", "PAYGATE_RATE_LIMIT_BURST": "1000000"}


def card_numbers(count: int, seed: int = 7) -> list[str]:
    """Distinct-looking Visa numbers (16 digits, Luhn-valid)."""
    rng = random.Random(seed)
    return [luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14))) for _ in range(count)]


@dataclass
class Result:
    latencies_s: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def _tokenize(client: httpx.AsyncClient, number: str, result: Result | None) -> None:
    body = {"type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": str(YEAR),
            "card[cvc]": "123"}
    started = time.perf_counter()
    try:
        response = await client.post("/v1/payment_methods", data=body)
    except httpx.HTTPError as error:
        if result is not None:
            result.fail(type(error).__name__)
        return
    if result is None:
        return
    if response.status_code == 200:
        result.latencies_s.append(time.perf_counter() - started)
    else:
        result.fail(f"HTTP {response.status_code}")


async def _worker(client: httpx.AsyncClient, queue: asyncio.Queue[str], result: Result | None) -> None:
    while True:
        try:
            number = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await _tokenize(client, number, result)


async def _run_phase(client: httpx.AsyncClient, numbers: list[str], concurrency: int,
                     result: Result | None) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for number in numbers:
        queue.put_nowait(number)
    started = time.perf_counter()
    await asyncio.gather(*[_worker(client, queue, result) for _ in range(concurrency)])
    return time.perf_counter() - started


async def bench(url: str, key: str, count: int, concurrency: int, warmup: int) -> Result:
    numbers = card_numbers(count + warmup)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, auth=(key, ""), timeout=60, limits=limits) as client:
        await _run_phase(client, numbers[:warmup], concurrency, None)
        result = Result()
        result.elapsed_s = await _run_phase(client, numbers[warmup:], concurrency, result)
    return result


def report(result: Result, count: int, concurrency: int, url: str) -> str:
    ok = len(result.latencies_s)
    lat = sorted(result.latencies_s)
    failed = ", ".join(f"{n} {reason}" for reason, n in sorted(result.failures.items())) or "none"
    ms = [percentile(lat, q) * 1000 for q in (0.5, 0.9, 0.99)]
    return (f"tokenize benchmark: {count} tokenizations, concurrency {concurrency}, {url}\n"
            f"  throughput  {ok / result.elapsed_s:.1f} tokenizations/s ({ok} ok in {result.elapsed_s:.2f} s; "
            f"failed: {failed})\n"
            f"  latency     p50 {ms[0]:.1f} ms   p90 {ms[1]:.1f} ms   p99 {ms[2]:.1f} ms   "
            f"max {(lat[-1] if lat else float('nan')) * 1000:.1f} ms")


def bench_merchant(url: str, admin_key: str) -> str:
    """A fresh merchant with its rate limit raised, so the bench measures the vault, not the limiter."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30) as admin:
        created = admin.post("/v1/admin/merchants", data={"name": "tokenize benchmark"})
        created.raise_for_status()
        merchant = created.json()
        admin.post(f"/v1/admin/merchants/{merchant['id']}/rate_limit",
                   data={"rate": "1000000", "burst": "1000000"}).raise_for_status()
    return str(merchant["secret_key"])


@contextmanager
def local_stack(data_dir: str | None) -> Iterator[tuple[str, str]]:
    """Start a local stack (the same code path as `paygate up`); yield (url, merchant key); stop it."""
    from cluster.config import load_config
    from cluster.procs import free_port
    from cluster.stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="paygate-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYGATE_") and k != "RAY_ADDRESS"}
        env.update(_UNLIMITED, PAYGATE_DATA_DIR=data_dir or tmp, PAYGATE_HTTP_PORT=str(free_port()),
                   PAYGATE_LOG_LEVEL="WARNING")
        os.environ.update(_UNLIMITED)  # the gateway child process inherits them
        stack = LocalStack(load_config(env), progress=True)
        info = stack.start()
        try:
            yield info.base_url, info.test_secret_key
        finally:
            stack.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench.tokenize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway (default: start a local stack for the run)")
    parser.add_argument("--key", help="merchant secret key (with --url)")
    parser.add_argument("--admin-key", help="operator key (with --url): bench as a fresh, unthrottled merchant")
    parser.add_argument("--count", type=int, default=2000, help="measured tokenizations (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured requests first (default 100)")
    parser.add_argument("--data-dir", help="data dir of the local stack (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.url and not (args.key or args.admin_key):
        parser.error("--url needs --key or --admin-key")
    if args.count < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--count and --concurrency must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        key = args.key or bench_merchant(args.url, args.admin_key)
        result = asyncio.run(bench(args.url, key, args.count, args.concurrency, args.warmup))
        url = args.url
    else:
        with local_stack(args.data_dir) as (url, key):
            result = asyncio.run(bench(url, key, args.count, args.concurrency, args.warmup))
    print(report(result, args.count, args.concurrency, url), flush=True)
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
