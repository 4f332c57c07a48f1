"""ASGI middleware: a `Request-Id` on every response and in every log line, and a Stripe-shaped
500 for anything unexpected (never a stack trace, never request data)."""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.ids import new_id
from cluster.logs import request_id_var
from gateway.errors import ApiError, error_response

log = logging.getLogger("paygate.gateway")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client hung up mid-request: nobody to answer, nothing went wrong here
            status = 499
            log.info("%s %s: client disconnected before the request was read", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not response_started:
                error = ApiError("An unexpected error occurred; it has been logged. Retry with the same "
                                 "Idempotency-Key to get the definitive result.")
                await error_response(error, request_id)(scope, receive, send_with_id)
        finally:
            if status >= 500 or log.isEnabledFor(logging.DEBUG):
                log.info("%s %s -> %s in %.1f ms", scope.get("method"), scope.get("path"), status,
                         (time.perf_counter() - started) * 1000)
            request_id_var.reset(token)
