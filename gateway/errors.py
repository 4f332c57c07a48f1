"""The gateway's view of Stripe-shaped errors: the shared types, rendered as responses."""

from __future__ import annotations

from starlette.responses import Response

from actors.errors import (
    ApiError,
    AuthenticationError,
    CardError,
    IdempotencyError,
    IdempotencyInProgress,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StripeError,
)


def error_response(error: StripeError, request_id: str | None = None) -> Response:
    return Response(error.body_bytes(request_id), status_code=error.status, headers=error.headers,
                    media_type="application/json")


__all__ = ["ApiError", "AuthenticationError", "CardError", "IdempotencyError", "IdempotencyInProgress",
           "InvalidRequest", "NotFound", "PayloadTooLarge", "RateLimited", "StripeError", "error_response"]
