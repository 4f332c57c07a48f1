"""asyncpg pools with JSON codecs, created inside the caller's event loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson


def _encode_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset (`RESET ALL`, `CLOSE ALL`, `UNLISTEN *`,
    advisory unlock: a round trip on every release). Nothing here changes session state — advisory
    locks are transaction-level, no LISTEN, no session SET — and an open transaction is still rolled
    back by the pool before this runs."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection,
                                     reset=_keep_session, **kwargs)
    assert pool is not None
    return pool


def as_columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as column arrays, for one `INSERT … SELECT … FROM unnest(…)` instead of a statement per row."""
    return [[row[i] for row in rows] for i in range(width)]
