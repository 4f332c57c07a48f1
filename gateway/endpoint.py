"""The front door's duties for every API call, in one place: authenticate, rate-limit, cap and
parse the body, and turn any StripeError into its Stripe-shaped response."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import check_admin_key
from gateway.errors import PayloadTooLarge, StripeError, error_response
from gateway.params import FORM, Params, parse_body, reject_nul
from gateway.state import GatewayState


@dataclass(frozen=True)
class Call:
    request: Request
    state: GatewayState
    merchant_id: str
    params: Params

    @property
    def idempotency_key(self) -> str | None:
        return self.request.headers.get("idempotency-key")


Handler = Callable[[Call], Awaitable[Response]]


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _params(request: Request, state: GatewayState) -> Params:
    for name, value in request.path_params.items():
        reject_nul(value, name)
    if request.method in ("GET", "DELETE"):
        raw = request.scope["query_string"]
        params = parse_body(FORM, raw)  # a query string is form-encoded
    else:
        raw = await read_body(request, state.config.max_body_bytes)
        params = parse_body(request.headers.get("content-type", ""), raw)
    if any(nul in raw for nul in _NUL_SPELLINGS):  # walk the params only when one can hold a NUL
        reject_nul(params, "")
    return params


# How a NUL reaches a value: raw, percent-encoded (a form, a query) or escaped (JSON).
_NUL_SPELLINGS = (b"\x00", b"%00", b"\\u0000")


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def merchant_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.gw
        try:
            merchant_id = await state.auth.merchant_id(request)
            await state.rate.check(merchant_id)
            return await handler(Call(request, state, merchant_id, await _params(request, state)))
        except StripeError as error:
            return error_response(error, _request_id(request))

    return endpoint


def admin_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.gw
        try:
            check_admin_key(request, state.admin_key)
            return await handler(Call(request, state, "", await _params(request, state)))
        except StripeError as error:
            return error_response(error, _request_id(request))

    return endpoint
