"""`/v1/webhook_endpoints`: where a merchant's events are POSTed, signed like Stripe's.
The signing secret (`whsec_…`) is returned once, at creation."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlparse

from starlette.responses import Response

from actors.errors import InvalidRequest, NotFound
from actors.ids import new_id, random_token
from actors.payments.render import API_VERSION
from gateway import validation as v
from gateway.endpoint import Call, merchant_endpoint
from gateway.pagination import ListQuery, list_objects
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param

EVENT_TYPES = frozenset({
    "payment_intent.created", "payment_intent.processing", "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "charge.succeeded", "charge.captured", "charge.refunded", "refund.created", "refund.updated", "refund.failed",
    "review.opened",
})


def endpoint_object(row: Any, secret: bool = False) -> dict[str, Any]:
    obj = {"id": row["id"], "object": "webhook_endpoint", "api_version": API_VERSION, "application": None,
           "created": row["created"], "description": row["description"],
           "enabled_events": list(row["enabled_events"]), "livemode": False, "metadata": row["metadata"] or {},
           "status": row["status"], "url": row["url"]}
    if secret:
        obj["secret"] = row["secret"]
    return obj


def _url(params: dict[str, Any], required: bool) -> str | None:
    url = v.string(params, "url", 2048)
    if url is None:
        if required:
            v.required(params, "url")
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest("Invalid URL: must be an http(s) URL.", code="url_invalid", param="url")
    return url


def _enabled_events(params: dict[str, Any], required: bool) -> list[str] | None:
    raw = params.get("enabled_events")
    if raw in (None, "", []):
        if required:
            v.required(params, "enabled_events")
        return None
    events = [raw] if isinstance(raw, str) else list(raw)
    for index, name in enumerate(events):
        if name != "*" and name not in EVENT_TYPES:
            raise InvalidRequest(f"Invalid event type: {str(name)[:60]}", code="parameter_invalid_string",
                                 param=f"enabled_events[{index}]")
    return events


async def _load(call: Call) -> Any:
    endpoint_id = str(call.request.path_params["id"])
    row = await call.state.pool.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL",
        endpoint_id, call.merchant_id)
    if row is None:
        raise NotFound("webhook_endpoint", endpoint_id)
    return row


@merchant_endpoint
async def create(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("url", "enabled_events", "description", "metadata", "api_version", "connect"))
    url, events = _url(p, True), _enabled_events(p, True)
    row = await call.state.pool.fetchrow(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, description, secret, metadata, created) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        new_id("we"), call.merchant_id, url, events, v.string(p, "description", 5000), "whsec_" + random_token(24),
        v.metadata(p), int(time.time()))
    return JSONResponse(endpoint_object(row, secret=True))


@merchant_endpoint
async def update(call: Call) -> Response:
    p = call.params
    v.reject_unknown(p, ("url", "enabled_events", "description", "metadata", "disabled"))
    row = await _load(call)
    disabled = p.get("disabled")
    status = row["status"] if disabled in (None, "") else ("disabled" if v.boolean(p, "disabled") else "enabled")
    row = await call.state.pool.fetchrow(
        "UPDATE webhook_endpoints SET url = $2, enabled_events = $3, description = $4, status = $5, "
        "failing_since = CASE WHEN $5 = 'enabled' THEN NULL ELSE failing_since END WHERE id = $1 RETURNING *",
        row["id"], _url(p, False) or row["url"], _enabled_events(p, False) or row["enabled_events"],
        v.string(p, "description", 5000) or row["description"], status)
    return JSONResponse(endpoint_object(row))


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    return JSONResponse(endpoint_object(await _load(call)))


@merchant_endpoint
async def delete(call: Call) -> Response:
    row = await _load(call)
    await call.state.pool.execute("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1", row["id"])
    return JSONResponse({"id": row["id"], "object": "webhook_endpoint", "deleted": True})


@merchant_endpoint
async def list_endpoints(call: Call) -> Response:
    v.reject_unknown(call.params, ("limit", "starting_after", "ending_before", "created"))
    body = await list_objects(call.state.pool, call.merchant_id, call.params,
                              ListQuery("webhook_endpoints", "webhook_endpoint", {}, "deleted_at IS NULL"),
                              "/v1/webhook_endpoints", endpoint_object)
    return JSONResponse(body)


@merchant_endpoint
async def resend(call: Call) -> Response:
    row = await _load(call)
    event_id = str(call.request.path_params["event_id"])
    event = await call.state.pool.fetchrow(
        "SELECT object_id, seq FROM outbox_events WHERE id = $1 AND merchant_id = $2", event_id, call.merchant_id)
    if event is None:
        raise NotFound("event", event_id, param="event_id")
    delivery = await call.state.pool.fetchval(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, merchant_id, ordering_key, event_seq, manual) "
        "VALUES ($1, $2, $3, $4, $5, true) RETURNING id", event_id, row["id"], call.merchant_id,
        event["object_id"], event["seq"])
    return JSONResponse({"object": "webhook_delivery", "id": delivery, "event": event_id, "webhook_endpoint": row["id"],
                         "status": "pending"})


_TAGS = ("webhook_endpoints",)
_PARAMS = (Param("url", required=True), Param("enabled_events", "array", True, "event types, or *"),
           Param("description"), Param("metadata", "object"))
ROUTES = [
    ApiRoute("/v1/webhook_endpoints", "POST", create, "Create a webhook endpoint (returns its secret once)",
             _PARAMS, returns="webhook_endpoint", tags=_TAGS),
    ApiRoute("/v1/webhook_endpoints", "GET", list_endpoints, "List webhook endpoints",
             (Param("limit", "integer"), Param("starting_after"), Param("ending_before")), returns="list", tags=_TAGS),
    ApiRoute("/v1/webhook_endpoints/{id}", "GET", retrieve, "Retrieve a webhook endpoint", returns="webhook_endpoint",
             tags=_TAGS),
    ApiRoute("/v1/webhook_endpoints/{id}", "POST", update, "Update a webhook endpoint (url, events, disabled)",
             (Param("url"), Param("enabled_events", "array"), Param("description"), Param("disabled", "boolean")),
             returns="webhook_endpoint", tags=_TAGS),
    ApiRoute("/v1/webhook_endpoints/{id}", "DELETE", delete, "Delete a webhook endpoint", returns="deleted object",
             tags=_TAGS),
    ApiRoute("/v1/webhook_endpoints/{id}/resend/{event_id}", "POST", resend,
             "Extension: deliver an event to this endpoint again, now", returns="webhook_delivery", tags=_TAGS),
]
