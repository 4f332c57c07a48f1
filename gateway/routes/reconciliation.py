"""Operator endpoints for reconciliation runs (admin key only; merchant keys get 401).

`GET /v1/reconciliation/runs` lists runs, newest business date first (`limit` 1-100,
`starting_after` a run id, `business_date`). `GET /v1/reconciliation/runs/{id}` is one run with
its items: the discrepancies by default, or `classification=…` (one of the seven, `matched`
included, or `all`), paged by `limit` (1-1000, default 100) and `starting_after` (an item's `seq`),
plus the unknown outcomes settled from the file.
"""

from __future__ import annotations

from datetime import date

from starlette.responses import Response

from actors.reconciler import store
from actors.reconciler.classify import CLASSIFICATIONS
from gateway import validation as v
from gateway.endpoint import Call, admin_endpoint
from gateway.errors import InvalidRequest, NotFound
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param


@admin_endpoint
async def list_runs(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("limit", "starting_after", "business_date"))
    limit = v.integer(p, "limit", minimum=1, maximum=100) or 10
    where, args = ["TRUE"], []
    if day := v.string(p, "business_date", 10):
        try:
            args.append(date.fromisoformat(day))
        except ValueError:
            raise InvalidRequest("business_date must be YYYY-MM-DD.", code="parameter_invalid",
                                 param="business_date") from None
        where.append(f"business_date = ${len(args)}")
    if after := v.string(p, "starting_after", 255):
        anchor = await call.state.pool.fetchrow("SELECT business_date, id FROM reconciliation_runs WHERE id = $1",
                                                after)
        if anchor is None:
            raise NotFound("reconciliation_run", after, param="starting_after")
        args += [anchor["business_date"], anchor["id"]]
        where.append(f"(business_date, id) < (${len(args) - 1}, ${len(args)})")
    rows = await call.state.pool.fetch(
        f"SELECT * FROM reconciliation_runs WHERE {' AND '.join(where)} ORDER BY business_date DESC, id DESC "
        f"LIMIT {limit + 1}", *args)
    return JSONResponse({"object": "list", "data": [store.run_object(r) for r in rows[:limit]],
                         "has_more": len(rows) > limit, "url": "/v1/reconciliation/runs"})


@admin_endpoint
async def retrieve_run(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("limit", "starting_after", "classification"))
    run_id = str(call.request.path_params["id"])
    row = await store.fetch_run(call.state.pool, run_id)
    if row is None:
        raise NotFound("reconciliation_run", run_id)
    limit = v.integer(p, "limit", minimum=1, maximum=1000) or 100
    after = v.integer(p, "starting_after", minimum=0, maximum=2**31 - 1) or 0
    wanted = v.string(p, "classification", 40, (*CLASSIFICATIONS, "all", "discrepancies")) or "discrepancies"
    classes: list[str] | None = None if wanted == "all" else (
        [c for c in CLASSIFICATIONS if c != "matched"] if wanted == "discrepancies" else [wanted])
    items = await store.fetch_items(call.state.pool, run_id, classifications=classes, after_seq=after,
                                    limit=limit + 1)
    resolutions = await store.fetch_resolutions(call.state.pool, run_id)
    body = {**store.run_object(row),
            "items": {"object": "list", "classification": wanted, "data": [store.item_object(i) for i in items[:limit]],
                      "has_more": len(items) > limit, "url": f"/v1/reconciliation/runs/{run_id}"},
            "resolutions": [store.resolution_object(r) for r in resolutions]}
    return JSONResponse(body)


_TAGS = ("reconciliation",)
ROUTES = [
    ApiRoute("/v1/reconciliation/runs", "GET", list_runs,
             "Operator: list reconciliation runs, newest business date first (admin key only)",
             (Param("limit", "integer"), Param("starting_after"), Param("business_date", description="YYYY-MM-DD")),
             auth="admin", returns="list", tags=_TAGS),
    ApiRoute("/v1/reconciliation/runs/{id}", "GET", retrieve_run,
             "Operator: one reconciliation run with its discrepancies (admin key only)",
             (Param("classification", description="discrepancies (default), all, or one classification"),
              Param("limit", "integer"), Param("starting_after", "integer", description="an item's seq")),
             auth="admin", returns="reconciliation_run", tags=_TAGS),
]
