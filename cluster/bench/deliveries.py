"""What a webhook delivery costs the dispatcher's HTTP client (`actors/events/http.py`): signed
1.3 KB events POSTed over keep-alive connections to the bench's receiver, in a process of its
own (so the client's CPU is this process's alone), a few at a time, on uvloop as in a Ray actor.

    python -m cluster.bench.deliveries                      # 20,000 deliveries, 2 and 20 at a time
    python -m cluster.bench.deliveries --deliveries 50000 --concurrency 1 8 64 --json

Each row: CPU µs of this process per delivery (signing included) and deliveries/s. The receiver
verifies every signature, as in `paygate bench` (a delivery it refuses fails the run); its CPU is
not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass

import uvloop

from actors.events.http import WebhookClient
from actors.events.signing import sign
from cluster.bench.receiver import ReceiverProcess

_SECRET = "whsec_bench_deliveries"
_PATH = "/deliveries"
_EVENT = {"id": "evt_" + "x" * 24, "object": "event", "type": "payment_intent.succeeded",
          "data": {"object": {"id": "pi_" + "y" * 24, "payment_intent": None, "padding": "z" * 1100}}}
_BODY = json.dumps(_EVENT).encode()


@dataclass(frozen=True)
class Row:
    concurrency: int
    deliveries: int
    cpu_us_per_delivery: float
    deliveries_per_s: float


async def _measure(url: str, deliveries: int, concurrency: int) -> Row:
    client = WebhookClient(timeout_s=10, max_idle_per_origin=concurrency)
    headers = {"Content-Type": "application/json; charset=utf-8"}

    async def deliver(count: int) -> None:
        for _ in range(count):
            status, _ = await client.post(url, _BODY, {**headers, "Stripe-Signature": sign(_BODY, _SECRET)})
            if status != 200:
                raise RuntimeError(f"the receiver answered {status}")

    await asyncio.gather(*(deliver(10) for _ in range(concurrency)))  # connections opened, code warm
    share, extra = divmod(deliveries, concurrency)
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(deliver(share + (i < extra)) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await client.close()
    return Row(concurrency, deliveries, round(cpu / deliveries * 1e6, 1), round(deliveries / elapsed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=20_000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 20], help="deliveries in flight")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if args.deliveries < 1 or min(args.concurrency) < 1:
        parser.error("--deliveries and --concurrency must be at least 1")
    receiver = ReceiverProcess().start()
    try:
        receiver.set_secrets({_PATH: _SECRET})
        rows = [uvloop.run(_measure(receiver.url + _PATH, args.deliveries, level)) for level in args.concurrency]
    finally:
        receiver.stop()
    if args.json:
        print(json.dumps([asdict(row) for row in rows]))
        return
    print(f"{'in flight':>9} {'deliveries':>10} {'CPU µs/delivery':>16} {'deliveries/s':>13}")
    for row in rows:
        print(f"{row.concurrency:>9} {row.deliveries:>10} {row.cpu_us_per_delivery:>16} {row.deliveries_per_s:>13}")


if __name__ == "__main__":
    main()
