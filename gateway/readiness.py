"""`/readyz`: each part of the system checked concurrently, each with its own timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster.broker import kafka_ready
from gateway.state import GatewayState

_TIMEOUT_S = 3.0

Check = Callable[[], Awaitable[Any]]


async def _run(check: Check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), _TIMEOUT_S)
        status: dict[str, Any] = {"status": "ok"}
    except Exception as error:  # any failure is "down"; the reason is reported, not raised
        status = {"status": "down", "error": f"{type(error).__name__}: {error}"[:300]}
    status["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return status


def _checks(state: GatewayState) -> dict[str, Check]:
    actors = state.actors

    async def ledger() -> None:
        await state.pool.fetchval("SELECT 1")

    async def vault() -> None:
        await actors["card-vault"].ping.remote()

    async def kafka() -> None:
        bootstrap = state.config.kafka_bootstrap
        if not bootstrap:
            raise RuntimeError("PAYGATE_KAFKA_BOOTSTRAP is not configured")
        await kafka_ready(bootstrap, _TIMEOUT_S)

    async def acquirer() -> None:
        await actors["acquirer-link-0"].echo.remote()

    async def ray_actors() -> None:
        await asyncio.gather(*[handle.ping.remote() for handle in actors.values()])

    checks: dict[str, Check] = {"ledger_db": ledger, "kafka": kafka, "ray_actors": ray_actors}
    if "card-vault" in actors:
        checks["vault_db"] = vault
    if "acquirer-link-0" in actors:
        checks["acquirer"] = acquirer
    return checks


async def readiness(state: GatewayState) -> tuple[bool, dict[str, Any]]:
    checks = _checks(state)
    results = await asyncio.gather(*[_run(check) for check in checks.values()])
    parts = dict(zip(checks, results, strict=True))
    ready = all(part["status"] == "ok" for part in parts.values())
    return ready, {"status": "ok" if ready else "unavailable", "parts": parts}
