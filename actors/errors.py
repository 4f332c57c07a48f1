"""Stripe-shaped errors: `{"error": {"type", "code", "message", "param", ...}}` with Stripe's statuses.

Shared by the gateway and the actors (a shard stores a decline's exact body for idempotent replay)."""

from __future__ import annotations

import json
from typing import Any

from cluster.logs import redact


class StripeError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        # Whatever a caller put in the message (an id, a value it echoes), a card number never leaves.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.extra = extra
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        if request_id:
            error["request_log_url"] = f"/requests/{request_id}"
        error.update(self.extra)
        return {"error": error}

    def body_bytes(self, request_id: str | None = None) -> bytes:
        return json.dumps(self.body(request_id), separators=(",", ":")).encode()


class InvalidRequest(StripeError):
    status = 400
    type = "invalid_request_error"


class NotFound(InvalidRequest):
    status = 404

    def __init__(self, kind: str, object_id: str, param: str = "id") -> None:
        super().__init__(f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


class AuthenticationError(StripeError):
    status = 401
    type = "authentication_error"


class PermissionError_(StripeError):
    status = 403
    type = "invalid_request_error"


class CardError(StripeError):
    status = 402
    type = "card_error"


class RateLimited(StripeError):
    status = 429
    type = "invalid_request_error"

    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__("Too many requests hit the API too quickly. Please retry after a short delay.",
                         code="rate_limit", headers={"Retry-After": str(seconds)})


class IdempotencyError(StripeError):
    status = 400
    type = "idempotency_error"


class IdempotencyInProgress(StripeError):
    status = 409
    type = "idempotency_error"

    def __init__(self) -> None:
        super().__init__("There is currently another in-progress request using this Idempotent Key "
                         "(that probably means you submitted twice, and the other request is still "
                         "going through): please retry the request in a few seconds.",
                         code="idempotency_key_in_use")


class ApiError(StripeError):
    status = 500
    type = "api_error"


class PayloadTooLarge(InvalidRequest):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body is larger than the limit of {limit} bytes.",
                         code="payload_too_large")
