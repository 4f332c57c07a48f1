"""`/v1/events`: the events merchants receive by webhook, retrievable and listable."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from actors.errors import NotFound
from gateway import validation as v
from gateway.endpoint import Call, merchant_endpoint
from gateway.pagination import ListQuery, list_objects
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param


def _event(row: Any) -> dict[str, Any]:
    return dict(row["payload"])


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    event_id = str(call.request.path_params["id"])
    row = await call.state.pool.fetchrow("SELECT payload FROM outbox_events WHERE id = $1 AND merchant_id = $2",
                                         event_id, call.merchant_id)
    if row is None:
        raise NotFound("event", event_id)
    return JSONResponse(_event(row))


@merchant_endpoint
async def list_events(call: Call) -> Response:
    v.reject_unknown(call.params, ("limit", "starting_after", "ending_before", "created", "type"))
    filters = {}
    if event_type := v.string(call.params, "type", 100):
        filters["type"] = event_type
    body = await list_objects(call.state.pool, call.merchant_id, call.params,
                              ListQuery("outbox_events", "event", filters), "/v1/events", _event)
    return JSONResponse(body)


ROUTES = [
    ApiRoute("/v1/events", "GET", list_events, "List events, newest first",
             (Param("type"), Param("limit", "integer"), Param("starting_after"), Param("ending_before"),
              Param("created", "object")), returns="list", tags=("events",)),
    ApiRoute("/v1/events/{id}", "GET", retrieve, "Retrieve an event", returns="event", tags=("events",)),
]
