"""Health, readiness, the OpenAPI document and operator (admin) endpoints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from actors.registry import RATE_LIMITER
from cluster.merchants import create_merchant
from gateway.endpoint import Call, admin_endpoint
from gateway.errors import InvalidRequest, NotFound
from gateway.readiness import readiness
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ready, body = await readiness(request.app.state.gw)
    return JSONResponse(body, status_code=200 if ready else 503)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


@admin_endpoint
async def admin_create_merchant(call: Call) -> Response:
    name = call.params.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("A merchant needs a name of 1-200 characters.", code="parameter_missing", param="name")
    async with call.state.pool.acquire() as conn:
        merchant = await create_merchant(conn, name.strip())
    return JSONResponse({"object": "merchant", "id": merchant.merchant_id, "name": merchant.name,
                         "secret_key": merchant.secret_key})


@admin_endpoint
async def admin_set_rate_limit(call: Call) -> Response:
    merchant_id = call.request.path_params["merchant_id"]
    rate = _positive_number(call.params.get("rate"), "rate")
    burst = int(_positive_number(call.params.get("burst", rate), "burst"))
    exists = await call.state.pool.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id)
    if not exists:
        raise NotFound("merchant", merchant_id)
    await call.state.actors[RATE_LIMITER].set_merchant_limit.remote(merchant_id, rate, max(1, burst))
    return JSONResponse({"object": "rate_limit", "merchant": merchant_id, "rate": rate, "burst": max(1, burst)})


def _positive_number(raw: object, param: str) -> float:
    try:
        value = float(str(raw))
    except ValueError:
        value = -1.0
    if not 0 < value <= 1_000_000:
        raise InvalidRequest(f"{param} must be a number between 0 and 1000000.", code="parameter_invalid",
                             param=param)
    return value


ROUTES = [
    ApiRoute("/healthz", "GET", healthz, "Process liveness", auth="none", tags=("system",)),
    ApiRoute("/readyz", "GET", readyz, "Readiness of every part (503 when any is down)", auth="none",
             tags=("system",)),
    ApiRoute("/openapi.json", "GET", openapi_json, "This document", auth="none", tags=("system",)),
    ApiRoute("/v1/admin/merchants", "POST", admin_create_merchant,
             "Create a merchant and its secret key (operator key only; the key is shown once)",
             params=(Param("name", required=True),), auth="admin", returns="merchant", tags=("admin",)),
    ApiRoute("/v1/admin/merchants/{merchant_id}/rate_limit", "POST", admin_set_rate_limit,
             "Set a merchant's request rate limit (token bucket: rate per second and burst)",
             params=(Param("rate", "number", True), Param("burst", "integer")), auth="admin",
             returns="rate_limit", tags=("admin",)),
]
