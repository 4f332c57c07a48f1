"""Edge validation of request parameters, with Stripe's error codes and the offending `param`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from actors.errors import InvalidRequest
from actors.payments.money import MAX_AMOUNT, currency, format_amount
from cluster.logs import redact
from gateway.params import Params

METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500


def reject_unknown(params: Params, allowed: Iterable[str]) -> None:
    allowed_set = set(allowed) | {"expand"}
    for name in params:
        if name not in allowed_set:
            raise InvalidRequest(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def required(params: Params, name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise InvalidRequest(f"Missing required param: {name}.", code="parameter_missing", param=name)
    return value


def integer(params: Params, name: str, *, minimum: int = 0, maximum: int = MAX_AMOUNT,
            too_large: str = "parameter_invalid_integer") -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.lstrip("-").isdigit())):
        raise InvalidRequest(f"Invalid integer: {str(raw)[:40]}", code="parameter_invalid_integer", param=name)
    value = int(raw)
    if value < minimum:
        raise InvalidRequest(f"This value must be greater than or equal to {minimum}.",
                             code="parameter_invalid_integer", param=name)
    if value > maximum:
        raise InvalidRequest(f"This value must be less than or equal to {maximum}.", code=too_large, param=name)
    return value


def boolean(params: Params, name: str, default: bool = False) -> bool:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "false"):
        return str(raw).lower() == "true"
    raise InvalidRequest(f"Invalid boolean: {str(raw)[:40]}", code="parameter_invalid_boolean", param=name)


def string(params: Params, name: str, max_length: int, choices: Iterable[str] | None = None) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidRequest(f"Invalid string: {name} must be a string.", code="parameter_invalid_string",
                             param=name)
    if len(raw) > max_length:
        raise InvalidRequest(f"{name} must be at most {max_length} characters.", code="parameter_invalid_string",
                             param=name)
    if choices is not None and raw not in set(choices):
        options = ", ".join(choices)
        raise InvalidRequest(f"Invalid {name}: must be one of {options}", code="parameter_invalid_string",
                             param=name)
    return redact(raw)  # free text is stored and sent in events: a card number in it is masked


def amount_and_currency(params: Params) -> tuple[int, str]:
    required(params, "amount")
    code = str(required(params, "currency")).lower()
    cur = currency(code)
    if cur is None:
        raise InvalidRequest(f"Invalid currency: {code[:10]}. paygate supports these currencies: "
                             "usd, eur, gbp, jpy and others listed in the README.",
                             code="parameter_invalid_string", param="currency")
    amount = integer(params, "amount", minimum=1, too_large="amount_too_large")
    assert amount is not None
    if amount < cur.minimum:
        raise InvalidRequest(f"Amount must be at least {format_amount(cur.minimum, code)}",
                             code="amount_too_small", param="amount")
    return amount, code


def metadata(params: Params) -> dict[str, str]:
    raw = params.get("metadata")
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest("Invalid metadata: must be a hash of keys and values.", code="parameter_invalid_string",
                             param="metadata")
    if len(raw) > METADATA_MAX_KEYS:
        raise InvalidRequest(f"Invalid metadata: at most {METADATA_MAX_KEYS} keys are allowed.",
                             code="parameter_invalid_string", param="metadata")
    result = {}
    for key, value in raw.items():
        if len(key) > METADATA_KEY_MAX:
            raise InvalidRequest(f"Metadata keys can have up to {METADATA_KEY_MAX} characters.",
                                 code="parameter_invalid_string", param=f"metadata[{key[:40]}]")
        if isinstance(value, dict | list):
            raise InvalidRequest("Metadata values must be strings.", code="parameter_invalid_string",
                                 param=f"metadata[{key}]")
        text = "" if value is None else str(value)
        if len(text) > METADATA_VALUE_MAX:
            raise InvalidRequest(f"Metadata values can have up to {METADATA_VALUE_MAX} characters.",
                                 code="parameter_invalid_string", param=f"metadata[{key}]")
        if text:
            result[redact(key)] = redact(text)
    return result


def string_map(params: Params, name: str, allowed: Iterable[str]) -> dict[str, str]:
    raw = params.get(name) or {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid {name}: must be a hash.", code="parameter_invalid_string", param=name)
    keys = set(allowed)
    for key, value in raw.items():
        if key not in keys:
            raise InvalidRequest(f"Received unknown parameter: {name}[{key}]", code="parameter_unknown",
                                 param=f"{name}[{key}]")
        if not isinstance(value, str) or len(value) > 200:
            raise InvalidRequest(f"Invalid {name}[{key}]", code="parameter_invalid_string", param=f"{name}[{key}]")
    return dict(raw)


def expand(params: Params) -> frozenset[str]:
    raw = params.get("expand") or []
    if isinstance(raw, str):
        raw = [raw]
    return frozenset(str(x) for x in raw)


def request_hash(method: str, path: str, params: Params) -> str:
    canonical = json.dumps([method, path, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
