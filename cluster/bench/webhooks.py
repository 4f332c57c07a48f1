"""End-to-end webhook benchmark: events/s from state change to a receiver, and delivery lag.

    python -m cluster.bench.webhooks --url URL --admin-key KEY [--payments 1000] [--concurrency 32]
    python -m cluster.bench.webhooks [--payments 1000]      # starts (and stops) its own local stack

Each payment (create + confirm, automatic capture) produces three events: `payment_intent.created`,
`.succeeded` and `charge.succeeded`. Lag is measured for `payment_intent.succeeded`: from the
moment the client got the 200 for the payment (the state change has committed) to the moment the
receiver got the signed delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from hdrh.histogram import HdrHistogram

from cluster.config import load_config
from cluster.procs import free_port
from cluster.stack import LocalStack

EVENTS_PER_PAYMENT = 3



class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many deliveries connect at once: the default backlog of 5 drops them

class _Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}  # payment id -> arrival of payment_intent.succeeded
        self.events = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.monotonic()
                event = json.loads(body)
                with receiver.lock:
                    receiver.events += 1
                    if event["type"] == "payment_intent.succeeded":
                        receiver.arrivals.setdefault(event["data"]["object"]["id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


async def _pay(base_url: str, key: str, count: int, concurrency: int) -> dict[str, float]:
    committed: dict[str, float] = {}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, auth=(key, ""), timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one() -> None:
            async with semaphore:
                response = await client.post("/v1/payment_intents", data={
                    "amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
                if response.status_code == 200:
                    committed[response.json()["id"]] = time.monotonic()
        await asyncio.gather(*[one() for _ in range(count)])
    return committed


def run(base_url: str, admin_key: str, payments: int, concurrency: int, drain_s: float) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {admin_key}"}
    merchant = httpx.post(f"{base_url}/v1/admin/merchants", data={"name": "webhook bench"}, headers=admin).json()
    httpx.post(f"{base_url}/v1/admin/merchants/{merchant['id']}/rate_limit", data={"rate": "100000",
                                                                                 "burst": "100000"}, headers=admin)
    receiver = _Receiver()
    httpx.post(f"{base_url}/v1/webhook_endpoints", auth=(merchant["secret_key"], ""),
               data={"url": receiver.url, "enabled_events[]": "*"}).raise_for_status()
    started = time.monotonic()
    committed = asyncio.run(_pay(base_url, merchant["secret_key"], payments, concurrency))
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and receiver.events < EVENTS_PER_PAYMENT * len(committed):
        time.sleep(0.05)
    finished = time.monotonic()
    receiver.server.shutdown()
    lag = HdrHistogram(1, 600_000, 3)
    for payment, at in committed.items():
        if payment in receiver.arrivals:
            lag.record_value(max(1, int((receiver.arrivals[payment] - at) * 1000)))
    return {"payments": len(committed), "events_received": receiver.events,
            "events_expected": EVENTS_PER_PAYMENT * len(committed),
            "events_per_s": round(receiver.events / (finished - started), 1),
            "lag_ms": {p: lag.get_value_at_percentile(p) for p in (50, 90, 99)} if lag.get_total_count() else {},
            "missing_succeeded": len(set(committed) - set(receiver.arrivals))}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench.webhooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--admin-key")
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the last deliveries")
    args = parser.parse_args()
    if args.url:
        print(json.dumps(run(args.url, args.admin_key, args.payments, args.concurrency, args.drain), indent=2))
        return
    with tempfile.TemporaryDirectory() as data_dir:
        config = load_config({"PAYGATE_DATA_DIR": data_dir, "PAYGATE_HTTP_PORT": str(free_port())})
        stack = LocalStack(config)
        info = stack.start()
        try:
            result = run(info.base_url, info.admin_key, args.payments, args.concurrency, args.drain)
        finally:
            stack.stop()
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
