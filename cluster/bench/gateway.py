"""What the gateway's own code costs per request: the real Starlette app and its endpoints (auth,
rate limit, body parsing, validation, the command, the micro-batcher), with the shard and the
vault answering at once in this process, after a pickle round trip as a direct call makes. No HTTP
server and no sockets: uvicorn's share and the hops' are what `paygate bench` adds.

    python -m cluster.bench.gateway                          # 20,000 checkouts, 8 at a time
    python -m cluster.bench.gateway --checkouts 50000 --concurrency 1 --json

A checkout is the bench's: `POST /v1/payment_methods` with a card, then `POST
/v1/payment_intents` with it, confirmed, each through the whole ASGI stack. The CPU is this
process's (`time.process_time`), so a busy machine slows the run but barely moves the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.types import Message

from actors.batching import Batcher
from actors.payments.messages import PaymentCommand, Reply
from actors.payments.render import dumps
from actors.payments.shard import shard_index
from cluster.bench.client import form
from cluster.config import load_config
from gateway.app import create_app
from gateway.auth import MerchantAuthenticator
from gateway.ratelimit import RateLimitClient
from gateway.state import GatewayState

_KEY = "sk_test_" + "k" * 24
_MERCHANT = "acct_bench"
_CARD = form({"type": "card", "card[number]": "4242424242424242", "card[exp_month]": 12, "card[exp_year]": 2034,
              "card[cvc]": "123"})
# About the size of a real PaymentIntent reply (the shard's bytes pass through untouched).
_INTENT_REPLY = dumps({"id": "pi_" + "x" * 22, "object": "payment_intent", "status": "succeeded",
                       "charges": {"data": [{"field": "value " * 8} for _ in range(12)]}})


def _round_trip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, protocol=5))


async def _shard(commands: Sequence[PaymentCommand]) -> list[Reply]:
    _round_trip(commands)
    return _round_trip([Reply(200, _INTENT_REPLY) for _ in commands])


async def _vault(requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    _round_trip(requests)
    return _round_trip([{
        "id": f"pm_{i:022d}", "object": "payment_method", "type": "card", "created": int(time.time()),
        "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034, "country": "US",
                 "funding": "credit", "fingerprint": "f" * 16, "checks": {"cvc_check": None}},
        "billing_details": {}, "metadata": {}, "livemode": False} for i, _ in enumerate(requests)])


class _NoLimiter:
    """Never asked: the merchant holds more tokens than a run spends."""


def build_app(data_dir: str) -> Starlette:
    """The gateway app with its state in place of what its lifespan would connect to."""
    config = load_config({"PAYGATE_DATA_DIR": data_dir})
    app = create_app(config)
    auth = MerchantAuthenticator(pool=None)  # type: ignore[arg-type]  # the key is cached below
    auth.cache[_KEY] = (_MERCHANT, float("inf"))
    rate = RateLimitClient(_NoLimiter(), config.rate_limit_per_s)
    rate.tokens[_MERCHANT] = sys.maxsize
    state = GatewayState(config=config, pool=None, auth=auth, rate=rate,  # type: ignore[arg-type]
                         admin_key="", shards=[None] * config.shards, tokenizer=Batcher(_vault))
    state.shard_batchers[shard_index(_MERCHANT, config.shards)] = Batcher(_shard)
    app.state.gw = state
    return app


async def _post(app: Starlette, path: str, body: bytes) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {_KEY}".encode()),
                         (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _checkout(app: Starlette, amount: int) -> None:
    status, body = await _post(app, "/v1/payment_methods", _CARD)
    if status != 200:
        raise RuntimeError(f"POST /v1/payment_methods answered {status}: {body[:200]!r}")
    method = json.loads(body)["id"]
    intent = form({"amount": amount, "currency": "usd", "payment_method": method, "confirm": "true"})
    status, body = await _post(app, "/v1/payment_intents", intent)
    if status != 200:
        raise RuntimeError(f"POST /v1/payment_intents answered {status}: {body[:200]!r}")


async def measure(checkouts: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="paygate-gw-bench-") as data_dir:
        app = build_app(data_dir)
        for i in range(min(500, checkouts)):  # warm: imports, caches, the batchers' round trips
            await _checkout(app, 1000 + i)
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, checkouts, concurrency):
            await asyncio.gather(*[_checkout(app, 1000 + first + i)
                                   for i in range(min(concurrency, checkouts - first))])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    return {"checkouts": checkouts, "concurrency": concurrency, "cpu_us_per_request": cpu / checkouts / 2 * 1e6,
            "cpu_us_per_checkout": cpu / checkouts * 1e6, "requests_per_cpu_s": 2 * checkouts / cpu,
            "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench.gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=20_000, help="checkouts measured (default 20,000)")
    parser.add_argument("--concurrency", type=int, default=8, help="checkouts in flight at once (default 8)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.checkouts < 1 or args.concurrency < 1:
        parser.error("--checkouts and --concurrency must be at least 1")
    import uvloop  # the gateway's loop under uvicorn

    result = uvloop.run(measure(args.checkouts, args.concurrency))
    if args.json:
        print(json.dumps(result))
        return
    print(f"gateway code: {result['cpu_us_per_request']:.1f} µs of CPU per request, "
          f"{result['cpu_us_per_checkout']:.1f} per checkout ({args.checkouts:,} checkouts, "
          f"{args.concurrency} at a time; {result['requests_per_cpu_s']:,.0f} requests per CPU second)")


if __name__ == "__main__":
    main()
