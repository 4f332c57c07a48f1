"""One description per API route: Starlette mounts it and the OpenAPI document is generated from it,
so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.params import FORM


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "string"
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class ApiRoute:
    path: str
    method: str
    endpoint: Callable[[Request], Awaitable[Response]]
    summary: str
    params: tuple[Param, ...] = ()
    auth: str = "merchant"  # merchant | admin | none
    returns: str = "object"
    tags: tuple[str, ...] = field(default_factory=tuple)

    def starlette_route(self) -> Route:
        return Route(self.path, self.endpoint, methods=[self.method], name=f"{self.method} {self.path}")

    def openapi_operation(self) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": self.summary,
            "operationId": f"{self.method.lower()}{self.path.replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {"200": {"description": f"the {self.returns}"},
                          "default": {"description": "a Stripe-shaped error", "content": {
                              "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        }
        if self.tags:
            operation["tags"] = list(self.tags)
        path_params = [p.strip("{}") for p in self.path.split("/") if p.startswith("{")]
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path_params
        ]
        if self.method in ("GET", "DELETE"):
            parameters += [{"name": p.name, "in": "query", "required": p.required, "schema": {"type": p.type},
                            "description": p.description} for p in self.params]
        elif self.params:
            properties = {p.name: {"type": p.type, "description": p.description} for p in self.params}
            required = [p.name for p in self.params if p.required]
            schema: dict[str, Any] = {"type": "object", "properties": properties}
            if required:
                schema["required"] = required
            operation["requestBody"] = {"content": {FORM: {"schema": schema},
                                                    "application/json": {"schema": schema}}}
        if parameters:
            operation["parameters"] = parameters
        operation["security"] = {"merchant": [{"secretKey": []}], "admin": [{"adminKey": []}], "none": []}[self.auth]
        return operation
