"""Every API route of the gateway, in one list."""

from gateway.routes import (
    events,
    payment_intents,
    payment_methods,
    reconciliation,
    refunds,
    risk,
    system,
    vault_admin,
    webhook_endpoints,
)
from gateway.routes.spec import ApiRoute, Param


def all_routes() -> list[ApiRoute]:
    return [*system.ROUTES, *payment_methods.ROUTES, *payment_intents.ROUTES, *refunds.ROUTES, *vault_admin.ROUTES,
            *events.ROUTES, *webhook_endpoints.ROUTES, *risk.ROUTES,
            *reconciliation.ROUTES]


__all__ = ["ApiRoute", "Param", "all_routes"]
