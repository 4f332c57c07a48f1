"""`--baseline`: the ceiling of this machine for the same shape of work, measured in the same run
against the stack's own ledger PostgreSQL, after paygate's load (so they do not compete):

- the baseline endpoint (`baseline_app`: Starlette + asyncpg, one INSERT per request) served by
  uvicorn in a child process and driven by the same client: once open-loop at paygate's request
  rate (latency at equal load), once closed-loop flat out (its throughput ceiling);
- pgbench `-N` (simple-update TPC-B-like write transactions) with a few clients for a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvloop

from cluster.bench.book import Book
from cluster.bench.client import Endpoint, Pool, RequestBuilder, form
from cluster.bench.loadgen import Driver, Plan, drive
from cluster.bench.provision import Merchant
from cluster.bench.stats import Recorder
from cluster.postgres import pg_bin
from cluster.procs import ChildProcess, free_port
from cluster.runtime import tuned_gc

LABEL = "POST /v1/baseline"


async def _table(dsn: str, table: str, create: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if create:
            await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, amount bigint NOT NULL, "
                               "currency text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        else:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


def _server(dsn: str, table: str, port: int, log_dir: str) -> ChildProcess:
    env = dict(os.environ, BENCH_BASELINE_DSN=dsn, BENCH_BASELINE_TABLE=table)
    argv = [sys.executable, "-m", "uvicorn", "cluster.bench.baseline_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = ChildProcess("baseline", argv, Path(log_dir) / "baseline-uvicorn.log", env=env).start()
    server.wait_listening("127.0.0.1", port, timeout=60)
    return server


async def _baseline_flow(d: Driver, m: Merchant, i: int, due: float) -> bool:
    body = form({"amount": 500 + i % 19_500, "currency": "usd"})
    r = await d.call(LABEL, m.requests.post("/v1/baseline", body), started=due)
    return r is not None and r.status == 200


async def _open_loop(url: str, rate: float, seconds: float, concurrency: int) -> dict[str, Any]:
    endpoint = Endpoint.parse(url)
    pool = Pool(endpoint, concurrency)
    driver = Driver(pool, Recorder(0.0), Book(), seed=7, run_id="baseline")
    merchant = Merchant("baseline", "none", RequestBuilder(endpoint, "none"))
    result = await drive(Plan(rate, max(1, int(rate * seconds)), int(rate * 10) + 1000), _baseline_flow,
                         [merchant], driver)
    pool.close()
    return {"rate": rate, "seconds": round(result.wall_s, 2), "client_cpu_s": round(result.client_cpu_s, 2),
            "errors": sum(driver.recorder.errors.values()), **_summary(driver.recorder, result.wall_s)}


async def _closed_loop(url: str, seconds: float, workers: int) -> dict[str, Any]:
    endpoint = Endpoint.parse(url)
    pool = Pool(endpoint, workers)
    loop = asyncio.get_running_loop()
    driver = Driver(pool, Recorder(loop.time()), Book(), seed=7, run_id="baseline")
    merchant = Merchant("baseline", "none", RequestBuilder(endpoint, "none"))
    stop_at, cpu0 = loop.time() + seconds, time.process_time()

    async def worker(index: int) -> None:
        count = 0
        while loop.time() < stop_at:
            await _baseline_flow(driver, merchant, index * 1_000_000 + count, loop.time())
            count += 1

    started = loop.time()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    wall = loop.time() - started
    pool.close()
    summary = _summary(driver.recorder, wall)
    return {"workers": workers, "seconds": round(wall, 2), "client_cpu_s": round(time.process_time() - cpu0, 2),
            "errors": sum(driver.recorder.errors.values()), **summary}


def _summary(recorder: Recorder, seconds: float) -> dict[str, Any]:
    stats = recorder.endpoints.get(LABEL) or recorder.overall
    return stats.summary(seconds)


def pgbench(dsn: str, clients: int = 4, seconds: int = 5) -> dict[str, Any]:
    """pgbench -N in a scratch database on the same server; tps and mean latency."""
    db = f"bench_pgbench_{os.getpid()}"
    scratch = urlsplit(dsn)._replace(path=f"/{db}").geturl()  # libpq takes the URL, socket or TCP
    asyncio.run(_database(dsn, db, create=True))
    try:
        subprocess.run([pg_bin("pgbench"), "-i", "-q", "-s", "4", scratch], check=True, capture_output=True)
        out = subprocess.run([pg_bin("pgbench"), "-N", "-n", "-M", "prepared", "-c", str(clients),
                              "-j", str(min(clients, 2)), "-T", str(seconds), scratch],
                             check=True, capture_output=True, text=True).stdout
    finally:
        asyncio.run(_database(dsn, db, create=False))
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    return {"clients": clients, "seconds": seconds, "tps": float(tps.group(1)) if tps else None,
            "latency_avg_ms": float(latency.group(1)) if latency else None}


async def _database(dsn: str, name: str, create: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' if create else f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


def run_baseline(dsn: str, rate: float, seconds: float, concurrency: int, log_dir: str) -> dict[str, Any]:
    """Both baselines; `rate` is paygate's request rate (requests/s) to compare latency at."""
    table = f"bench_baseline_{os.getpid()}"
    asyncio.run(_table(dsn, table, create=True))
    port = free_port()
    server = _server(dsn, table, port, log_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        with tuned_gc():  # as paygate's load runs
            same_rate = uvloop.run(_open_loop(url, rate, seconds, concurrency))
            ceiling = uvloop.run(_closed_loop(url, 5.0, min(concurrency, 64)))
    finally:
        server.stop()
        asyncio.run(_table(dsn, table, create=False))
    return {"http_same_rate": same_rate, "http_ceiling": ceiling, "pgbench": pgbench(dsn)}
