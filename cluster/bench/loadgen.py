"""Open-loop load: payments arrive at a fixed rate whatever the server does, so an overloaded
server shows up as latency (and, past the client's backlog cap, as dropped arrivals), never as a
client that politely slows down. The first request of each payment is timed from the moment it
was due, not from when a connection became free (no coordinated omission)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cluster.bench.book import Book, error_code
from cluster.bench.client import HttpError, Pool, Response
from cluster.bench.provision import Merchant
from cluster.bench.stats import Recorder


class Driver:
    """What a scenario's flow uses to make requests: timing, error accounting, the client's books."""

    def __init__(self, pool: Pool, recorder: Recorder, book: Book, seed: int, run_id: str) -> None:
        self.pool, self.recorder, self.book, self.run_id = pool, recorder, book, run_id
        self.rng = random.Random(seed)
        self.loop = asyncio.get_running_loop()

    async def call(self, label: str, raw: bytes, *, started: float | None = None, ok: tuple[int, ...] = (200,),
                   creates: bool = False) -> Response | None:
        """One request; None when no answer came (counted; a create without answer may still exist)."""
        t = self.loop.time() if started is None else started
        try:
            response = await self.pool.request(raw)
        except HttpError as error:
            self.recorder.request(label, t, self.loop.time(), error.kind, error.kind)
            if creates:
                self.book.unacknowledged_creates += 1
            return None
        failure = None if response.status in ok else f"{response.status} {error_code(response.body)}"
        self.recorder.request(label, t, self.loop.time(), str(response.status), failure)
        return response

    def amount(self) -> int:
        return self.rng.randint(500, 20_000)


Flow = Callable[[Driver, Merchant, int, float], Awaitable[bool]]


@dataclass(frozen=True)
class Plan:
    rate: float  # payments (flows) started per second
    total: int  # payments to start
    backlog: int  # flows in progress beyond which new arrivals are dropped (and counted)


@dataclass
class LoadResult:
    started: int
    wall_s: float  # first arrival to last completion
    schedule_s: float  # first to last arrival (what the rate was held over)
    client_cpu_s: float
    connections_opened: int  # by this load (a warm-up before it shares the pool)


async def _flow(driver: Driver, flow: Flow, merchant: Merchant, index: int, due: float) -> None:
    try:
        ok = await flow(driver, merchant, index, due)
    except Exception as error:  # a bug in a flow must not kill the run; it is counted and shown
        driver.recorder.errors[f"flow crashed: {type(error).__name__}: {error}"[:200]] += 1
        ok = False
    driver.recorder.payment(driver.loop.time(), ok)


async def drive(plan: Plan, flow: Flow, merchants: list[Merchant], driver: Driver,
                on_tick: Callable[[float, int], None] | None = None) -> LoadResult:
    loop, recorder = driver.loop, driver.recorder
    tasks: set[asyncio.Task[None]] = set()
    cpu0, t0, opened0 = time.process_time(), loop.time(), driver.pool.opened
    recorder.t0 = t0
    ticker = loop.create_task(_tick(on_tick, loop, tasks)) if on_tick else None
    started = 0
    for index in range(plan.total):
        due = t0 + index / plan.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= plan.backlog:
            recorder.dropped += 1
            recorder.errors["dropped: client backlog full (server far behind)"] += 1
            continue
        task = loop.create_task(_flow(driver, flow, merchants[index % len(merchants)], index, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        started += 1
    schedule_s = loop.time() - t0
    while tasks:
        await asyncio.wait(set(tasks))
    if ticker:
        ticker.cancel()
    return LoadResult(started, loop.time() - t0, schedule_s, time.process_time() - cpu0,
                      driver.pool.opened - opened0)


async def _tick(on_tick: Callable[[float, int], None], loop: asyncio.AbstractEventLoop,
                tasks: set[asyncio.Task[None]]) -> None:
    while True:
        await asyncio.sleep(0.5)
        on_tick(loop.time(), len(tasks))
