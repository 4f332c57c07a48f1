"""Health, readiness, the OpenAPI document and operator (admin) endpoints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.merchants import create_merchant
from gateway.endpoint import Call, admin_endpoint
from gateway.errors import InvalidRequest
from gateway.readiness import readiness
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


ROUTES = [
    ApiRoute("/healthz", "GET", healthz, "Process liveness", auth="none", tags=("system",)),
    ApiRoute("/readyz", "GET", readyz, "Readiness of every part (503 when any is down)", auth="none",
             tags=("system",)),
    ApiRoute("/openapi.json", "GET", openapi_json, "This document", auth="none", tags=("system",)),
    ApiRoute("/v1/admin/merchants", "POST", admin_create_merchant,
             "Create a merchant and its secret key (operator key only; the key is shown once)",
             params=(Param("name", required=True),), auth="admin", returns="merchant", tags=("admin",)),
]
