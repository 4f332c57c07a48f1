"""Every API route of the gateway, in one list."""

from gateway.routes import system
from gateway.routes.spec import ApiRoute, Param


def all_routes() -> list[ApiRoute]:
    return [*system.ROUTES]


__all__ = ["ApiRoute", "Param", "all_routes"]
