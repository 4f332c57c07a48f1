"""The baseline endpoint: the least a payment API can do per request on this machine. Starlette on
uvicorn (as the gateway), parse a form body, one INSERT through an asyncpg pool into its own
table, answer JSON. No actors, no bank, no outbox: the ceiling paygate is measured against.

    BENCH_BASELINE_DSN=postgresql://… BENCH_BASELINE_TABLE=t python -m uvicorn cluster.bench.baseline_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TABLE = os.environ.get("BENCH_BASELINE_TABLE", "bench_baseline")
_pool: asyncpg.Pool | None = None


async def insert(request: Request) -> Response:
    params = parse_qs((await request.body()).decode())
    amount = int(params.get("amount", ["0"])[0])
    currency = params.get("currency", ["usd"])[0]
    assert _pool is not None
    row_id = await _pool.fetchval(f"INSERT INTO {TABLE} (amount, currency) VALUES ($1, $2) RETURNING id",
                                  amount, currency)
    return JSONResponse({"id": row_id, "object": "baseline_payment", "amount": amount, "currency": currency})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global _pool
    _pool = await asyncpg.create_pool(os.environ["BENCH_BASELINE_DSN"], min_size=4, max_size=16)
    try:
        yield
    finally:
        await _pool.close()


app = Starlette(routes=[Route("/v1/baseline", insert, methods=["POST"])], lifespan=lifespan)
