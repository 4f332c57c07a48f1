"""The OpenAPI 3.1 document, generated from the route descriptions."""

from __future__ import annotations

from typing import Any

from gateway.routes.spec import ApiRoute


def openapi_document(routes: list[ApiRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = route.openapi_operation()
    return {
        "openapi": "3.1.0",
        "info": {"title": "paygate", "version": "0.1.0",
                 "description": "A compatible subset of Stripe's v1 API, plus documented extensions."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "secretKey": {"type": "http", "scheme": "bearer", "description": "sk_test_… merchant key"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "operator key (PAYGATE_ADMIN_KEY)"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["type", "message"],
                    "properties": {k: {"type": "string"} for k in ("type", "code", "message", "param",
                                                                   "decline_code", "doc_url")}}}},
            },
        },
    }
