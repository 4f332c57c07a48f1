"""The Starlette application: a Ray driver that routes merchant requests to the actors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import ray
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from actors.batching import Batcher
from actors.direct import DirectClient
from actors.registry import CARD_VAULT, RATE_LIMITER, shard_name, system_actors
from cluster.config import Config
from cluster.db import create_pool
from cluster.secrets import read_admin_key
from gateway.auth import MerchantAuthenticator
from gateway.errors import InvalidRequest, error_response
from gateway.middleware import RequestIdMiddleware
from gateway.openapi import openapi_document
from gateway.ratelimit import RateLimitClient
from gateway.routes import all_routes
from gateway.state import GatewayState

log = logging.getLogger("paygate.gateway")


def _connect_ray(config: Config) -> None:
    if not ray.is_initialized():
        ray.init(address=config.ray_address or "auto", namespace=config.ray_namespace,
                 log_to_driver=False, logging_level=logging.WARNING)


async def _not_found(request: Request, exc: Exception) -> Response:
    error = InvalidRequest(f"Unrecognized request URL ({request.method}: {request.url.path}).",
                           status=404)
    return error_response(error)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    error = InvalidRequest(f"Unrecognized request URL ({request.method}: {request.url.path}).",
                           status=405)
    return error_response(error)


def create_app(config: Config) -> Starlette:
    routes = all_routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not config.ledger_dsn:
            raise RuntimeError("PAYGATE_LEDGER_DSN is not set")
        _connect_ray(config)
        pool = await create_pool(config.ledger_dsn, min_size=2, max_size=20)
        actors = {spec.name: ray.get_actor(spec.name, namespace=config.ray_namespace)
                  for spec in system_actors(config)}
        vault = DirectClient(actors[CARD_VAULT])
        app.state.gw = GatewayState(
            config=config, pool=pool, auth=MerchantAuthenticator(pool),
            rate=RateLimitClient(actors[RATE_LIMITER], config.rate_limit_per_s),
            admin_key=read_admin_key(config), actors=actors,
            shards=[actors[shard_name(i)] for i in range(config.shards)], vault=actors[CARD_VAULT],
            tokenizer=Batcher(vault.sender("tokenize_many")),
        )
        log.info("gateway ready on %s", config.base_url)
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(
        routes=[route.starlette_route() for route in routes],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
        lifespan=lifespan,
    )
    app.state.openapi = openapi_document(routes)
    app.state.api_routes = routes
    return app
