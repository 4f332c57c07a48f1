"""The one narrow interface between paygate and a bank, whatever protocol the bank speaks."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from actors.acquirer.messages import AcquirerRequest, AcquirerResponse


@runtime_checkable
class AcquirerAdapter(Protocol):
    """Sends one request to the acquirer and returns its answer (like httpx's `handle_request`).

    `handle` raises `AcquirerTimeout` when the outcome is unknown (sent, no answer in time),
    `AcquirerUnavailable` when nothing was sent, and `ValueError` for a request the protocol
    cannot express (nothing sent either). A decline is a normal `AcquirerResponse`, not an error.
    """

    async def start(self) -> None:
        """Open connections; call from the event loop that will call `handle`."""

    async def handle(self, request: AcquirerRequest) -> AcquirerResponse:
        """Send `request` and wait for its answer."""
        ...

    async def close(self) -> None:
        """Close connections; requests still waiting fail with `AcquirerTimeout`."""
