"""Actors that must run by themselves (background loops) start in their constructor, so that a
restarted actor — Ray re-runs `__init__` on restart, not `start()` — resumes its work at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("paygate.actors")


def autostart(start: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None] | None:
    """Run `start()` in the background, retrying with backoff; no-op outside an event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None

    async def run() -> None:
        delay = 0.2
        while True:
            try:
                await start()
                return
            except Exception:
                log.exception("%s failed to start; retrying in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    return loop.create_task(run())
