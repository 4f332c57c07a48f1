"""The gateway's JSON response: Starlette's, rendered by orjson as the shard renders its replies
(the same compact UTF-8 JSON; a PaymentMethod in under a microsecond against some eight)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse as _StarletteJSONResponse

from actors.payments.render import dumps


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
