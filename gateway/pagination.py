"""Stripe list pagination over a (created, id) keyset: newest first, `limit` 1-100,
`starting_after` / `ending_before` cursors, `created[gt|gte|lt|lte]` filters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from actors.errors import InvalidRequest, NotFound
from gateway.params import Params
from gateway.validation import integer, string

_CREATED_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True)
class ListQuery:
    table: str
    kind: str  # for "No such …" errors
    filters: Mapping[str, Any]  # column -> value, ANDed with the merchant
    condition: str = ""  # a fixed SQL condition (no parameters), e.g. "deleted_at IS NULL"


async def list_objects(pool: asyncpg.Pool, merchant_id: str, params: Params, query: ListQuery, url: str,
                       render: Callable[[asyncpg.Record], dict[str, Any]]) -> dict[str, Any]:
    limit = integer(params, "limit", minimum=1, maximum=100) or 10
    where, args = ["merchant_id = $1"], [merchant_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.condition:
        where.append(query.condition)
    for column, value in query.filters.items():
        where.append(f"{column} = {arg(value)}")
    created = params.get("created")
    if isinstance(created, dict):
        for op, value in created.items():
            if op not in _CREATED_OPS:
                raise InvalidRequest(f"Received unknown parameter: created[{op}]", code="parameter_unknown",
                                     param=f"created[{op}]")
            name = f"created[{op}]"
            bound = integer({name: value}, name, minimum=0, maximum=2**62)
            where.append(f"created {_CREATED_OPS[op]} {arg(bound)}")
    elif created not in (None, ""):
        where.append(f"created = {arg(integer(params, 'created', minimum=0, maximum=2**62))}")
    after = string(params, "starting_after", 255)
    before = string(params, "ending_before", 255)
    if after and before:
        raise InvalidRequest("You may only specify one of these parameters: starting_after, ending_before.",
                             param="ending_before")
    order = "DESC"
    cursor = after or before
    if cursor:
        anchor = await pool.fetchrow(f"SELECT created, id FROM {query.table} WHERE id = $1 AND merchant_id = $2",
                                     cursor, merchant_id)
        if anchor is None:
            raise NotFound(query.kind, cursor, param="starting_after" if after else "ending_before")
        op = "<" if after else ">"
        where.append(f"(created, id) {op} ({arg(anchor['created'])}, {arg(anchor['id'])})")
        order = "DESC" if after else "ASC"
    sql = (f"SELECT * FROM {query.table} WHERE {' AND '.join(where)} "
           f"ORDER BY created {order}, id {order} LIMIT {limit + 1}")
    rows = await pool.fetch(sql, *args)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if order == "ASC":
        rows.reverse()
    return {"object": "list", "data": [render(r) for r in rows], "has_more": has_more, "url": url}
