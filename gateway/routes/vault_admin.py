"""Operator endpoints of the card vault: rotate the key-encrypting key (KEK) and watch the re-wrap.

`POST /v1/admin/vault/rotate_key` adds a KEK version (active at once for new cards) and starts the
background re-wrap of every data key; `GET /v1/admin/vault/rotation` reports its progress. Both
answer a `vault_rotation` object; nothing in it is key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from actors.errors import ApiError, StripeError
from actors.vault.crypto import KeyRingError
from gateway.endpoint import Call, admin_endpoint
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute


class VaultKeyConflict(StripeError):
    """The key ring cannot be rotated from here (e.g. it comes from the environment)."""

    status = 409
    type = "invalid_request_error"


def _stale_cards(status: Mapping[str, Any]) -> int:
    active = int(status["active_version"])
    return sum(int(n) for version, n in status["cards_per_version"].items() if int(version) < active)


def _state(status: Mapping[str, Any], stale: int) -> str:
    if status["running"]:
        return "running"
    if status["last_error"]:
        return "failed"
    return "complete" if stale == 0 else "pending"


def rotation_object(status: Mapping[str, Any], new_version: int | None = None) -> dict[str, Any]:
    """The `vault_rotation` object from the vault's `rotation_status()`."""
    stale = _stale_cards(status)
    body: dict[str, Any] = {
        "object": "vault_rotation",
        "status": _state(status, stale),
        "active_version": status["active_version"],
        "versions": status["versions"],
        "cards_per_version": status["cards_per_version"],
        "cards_pending": stale,
        "rewrapped": status["rewrapped"],
        "last_error": status["last_error"],
    }
    if new_version is not None:
        body["new_version"] = new_version
    return body


@admin_endpoint
async def rotate_key(call: Call) -> Response:
    try:
        new_version = int(await call.state.vault.rotate_key.remote())
    except KeyRingError as error:
        # Ray re-raises the actor's KeyRingError as a subclass of it; `cause` is the original,
        # whose message names files and variables, never key material.
        cause = getattr(error, "cause", error)
        raise VaultKeyConflict(str(cause), code="vault_key_not_rotatable") from None
    status = await call.state.vault.rotation_status.remote()
    return JSONResponse(rotation_object(status, new_version))


@admin_endpoint
async def rotation(call: Call) -> Response:
    try:
        status = await call.state.vault.rotation_status.remote()
    except KeyRingError:
        raise ApiError("The vault key ring could not be loaded; see the vault's log.") from None
    return JSONResponse(rotation_object(status))


ROUTES = [
    ApiRoute("/v1/admin/vault/rotate_key", "POST", rotate_key,
             "Add a vault key-encrypting key version and re-wrap every card's data key under it in the "
             "background (operator key only); payments keep flowing",
             auth="admin", returns="vault_rotation", tags=("admin",)),
    ApiRoute("/v1/admin/vault/rotation", "GET", rotation,
             "Progress of the vault key rotation: active version, cards per key version, re-wrap state "
             "(operator key only)",
             auth="admin", returns="vault_rotation", tags=("admin",)),
]
