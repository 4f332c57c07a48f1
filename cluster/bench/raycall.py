"""What one Ray actor call costs on this machine: the CPU of the caller, of the actor and of the
whole machine per call, and the call's latency — paced (a call every 1/rate s, like a hop under
light load, where each micro-batch carries one item) and back to back — for an actor with Ray's
default task events and for one without them, as paygate's actors run (`enable_task_events=False`),
and for the latter's direct calls (`actors/direct.py`: the same method over its Unix socket).

    python -m cluster.bench.raycall                          # 1,000 calls per actor and mode
    python -m cluster.bench.raycall --calls 3000 --rate 100 --items 10 --json

It starts a private local Ray (never a running paygate's) and measures the two actors in turns,
so a drift of the machine's speed lands on both. The machine's CPU counts every process: run it
on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import ray

from actors.direct import DirectCallable, DirectClient
from cluster.bench.monitor import cpu_seconds, machine_busy_cpu_s
from cluster.bench.stats import summary_us

# One item looks like a payment command between two hops: a few ids, an amount, a small dict.
_ITEM = {"payment_id": "pi_" + "x" * 24, "merchant_id": "acct_" + "y" * 16, "amount": 1999, "currency": "usd",
         "risk": {"ip": "203.0.113.7", "email": "buyer@example.com"}}
ACTORS = {"task events on": True, "task events off": False}  # label -> enable_task_events
DIRECT = "direct (socket)"  # the task-events-off actor called over its Unix socket


@dataclass(frozen=True)
class Measure:
    actor: str
    mode: str
    calls: int
    machine_ms_per_call: float
    caller_ms_per_call: float
    actor_ms_per_call: float
    p50_us: float
    p99_us: float


class Echo(DirectCallable):
    DIRECT_METHODS = frozenset({"echo"})

    async def echo(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return batch

    def pid(self) -> int:
        return os.getpid()


EchoActor = ray.remote(Echo)


Echoing = Callable[[list[dict[str, Any]]], Awaitable[Any]]


async def _measure(label: str, echo: Echoing, actor_pid: int, calls: int, rate: float | None, items: int) -> Measure:
    batch = [_ITEM] * items
    latencies: list[float] = []
    machine, caller, callee = machine_busy_cpu_s(), time.process_time(), cpu_seconds(actor_pid)
    for _ in range(calls):
        started = time.perf_counter()
        await echo(batch)
        latencies.append(time.perf_counter() - started)
        if rate:
            await asyncio.sleep(max(0.0, 1 / rate - latencies[-1]))
    per_call = 1000 / calls
    latency = summary_us([seconds * 1e6 for seconds in latencies])
    return Measure(label, f"paced {rate:g}/s" if rate else "back to back", calls,
                   round((machine_busy_cpu_s() - machine) * per_call, 3),
                   round((time.process_time() - caller) * per_call, 3),
                   round((cpu_seconds(actor_pid) - callee) * per_call, 3),
                   latency["p50_us"], latency["p99_us"])


async def measure(calls: int, rate: float, items: int, say: Callable[[str], None] = print) -> list[Measure]:
    """Each actor paced, then each back to back (Ray must be initialised)."""
    actors: dict[str, Any] = {label: EchoActor.options(enable_task_events=events).remote()
                              for label, events in ACTORS.items()}
    pids = {label: await actor.pid.remote() for label, actor in actors.items()}
    echoes: dict[str, Echoing] = {label: actor.echo.remote for label, actor in actors.items()}
    direct = DirectClient(actors["task events off"])
    echoes[DIRECT] = direct.sender("echo")
    pids[DIRECT] = pids["task events off"]
    for echo in echoes.values():
        for _ in range(100):  # warm-up: connections, worker imports, code paths
            await echo([_ITEM])
    if direct.connection is None:
        raise RuntimeError("the direct calls went through Ray (PAYGATE_DIRECT_CALLS=0?)")
    rows = []
    for mode_rate in (rate, None):
        for label, echo in echoes.items():
            say(f"{label}: {calls} calls " + (f"paced at {mode_rate:g}/s" if mode_rate else "back to back"))
            rows.append(await _measure(label, echo, pids[label], calls, mode_rate, items))
    return rows


def _table(rows: list[Measure]) -> str:
    lines = [f"{'actor':<16} {'mode':<14} {'calls':>6} {'machine ms/call':>16} {'caller ms':>10} "
             f"{'actor ms':>9} {'p50 µs':>8} {'p99 µs':>8}"]
    lines += [f"{m.actor:<16} {m.mode:<14} {m.calls:>6} {m.machine_ms_per_call:>16.3f} "
              f"{m.caller_ms_per_call:>10.3f} {m.actor_ms_per_call:>9.3f} {m.p50_us:>8.0f} {m.p99_us:>8.0f}"
              for m in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench.raycall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per actor and mode (default 1000)")
    parser.add_argument("--rate", type=float, default=100.0, help="calls/s in the paced mode (default 100)")
    parser.add_argument("--items", type=int, default=1, help="items per call, as a micro-batch (default 1)")
    parser.add_argument("--json", action="store_true", help="print the measures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rate <= 0 or args.items < 1:
        parser.error("--calls, --rate and --items must be positive")
    print("starting a private local Ray …", file=sys.stderr, flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             namespace=f"raycall-{os.getpid()}")
    try:
        rows = asyncio.run(measure(args.calls, args.rate, args.items,
                                   say=lambda line: print(line, file=sys.stderr, flush=True)))
    finally:
        ray.shutdown()
    print(json.dumps([asdict(m) for m in rows], indent=2) if args.json else _table(rows))


if __name__ == "__main__":
    main()
