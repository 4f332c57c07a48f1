"""cluster/db.py against the real ledger PostgreSQL: JSON values round-trip in binary format."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.db import create_pool
from cluster.stack import StackInfo

VALUES: list[Any] = [
    {"description": 'a "quoted" \\ back\\slash, {braces}, commas', "metadata": {"k": "é ☃"}, "n": [1, 2.5, None]},
    {"empty": {}, "list": [], "flag": True},
    "a plain string", 42, None,
]


def test_json_and_jsonb_round_trip_as_values_and_arrays(stack_info: StackInfo) -> None:
    async def run() -> None:
        pool = await create_pool(stack_info.ledger_dsn, min_size=1, max_size=1)
        try:
            for kind in ("json", "jsonb"):
                for value in VALUES[:-1]:
                    assert await pool.fetchval(f"SELECT $1::{kind}", value) == value, (kind, value)
                assert await pool.fetchval(f"SELECT $1::{kind}[]", VALUES) == VALUES, kind
                # PostgreSQL reads what was sent as the JSON it is, not as text that happens to parse
                as_text = await pool.fetchval(f"SELECT ($1::{kind}[])[1] ->> 'description'", VALUES)
                assert as_text == VALUES[0]["description"]
                assert await pool.fetchval(f"SELECT cardinality($1::{kind}[])", VALUES) == len(VALUES)
        finally:
            await pool.close()

    asyncio.run(run())
