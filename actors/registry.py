"""The system's actors: their names, how each is built from the configuration, and the one
function that creates them as named, detached actors in the paygate namespace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from cluster.config import Config

log = logging.getLogger("paygate.actors")

RATE_LIMITER = "rate-limiter"


@dataclass(frozen=True)
class ActorSpec:
    name: str
    actor_class: Any
    args: Callable[[Config], tuple[Any, ...]]
    needs_start: bool = False


def system_actors(config: Config) -> list[ActorSpec]:
    return [
        ActorSpec(RATE_LIMITER, _rate_limiter(), lambda c: (c.rate_limit_per_s, c.rate_limit_burst)),
    ]


def _rate_limiter() -> Any:
    from actors.ratelimit import RateLimiterActor

    return RateLimiterActor


def get_actor(name: str, config: Config) -> Any:
    return ray.get_actor(name, namespace=config.ray_namespace)


async def ensure_actors(config: Config) -> dict[str, Any]:
    """Create (or find) every system actor and run its async start(); return the handles by name."""
    handles: dict[str, Any] = {}
    for spec in system_actors(config):
        handles[spec.name] = spec.actor_class.options(
            name=spec.name,
            namespace=config.ray_namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
        ).remote(*spec.args(config))
    starts = [handles[s.name].start.remote() for s in system_actors(config) if s.needs_start]
    await asyncio.gather(*starts)
    log.info("actors ready: %s", ", ".join(handles))
    return handles
