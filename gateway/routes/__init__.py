"""Every API route of the gateway, in one list."""

from gateway.routes import payment_intents, payment_methods, refunds, system
from gateway.routes.spec import ApiRoute, Param


def all_routes() -> list[ApiRoute]:
    return [*system.ROUTES, *payment_methods.ROUTES, *payment_intents.ROUTES, *refunds.ROUTES]


__all__ = ["ApiRoute", "Param", "all_routes"]
