"""asyncpg pools with JSON codecs, created inside the caller's event loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

# JSON values travel in PostgreSQL's binary format: `json` is its UTF-8 text, `jsonb` a version
# byte (1) and the text. A text-format codec would make asyncpg send every json[] or jsonb[]
# parameter (the batched writes' event payloads, charges, metadata) as an array literal, quoted
# and escaped byte by byte, for PostgreSQL to parse back.
_JSONB_VERSION = b"\x01"


def _encode_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + _encode_json(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(memoryview(data)[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog",
                              format="binary")
    await conn.set_type_codec("jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog",
                              format="binary")


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
