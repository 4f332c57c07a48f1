"""`/v1/risk/rules` (a documented paygate extension): a merchant's fraud rules.

GET shows the rules in force (defaults until the merchant changes them). POST updates what it
names and keeps the rest: a top-level field replaces its value, `max_amount[usd]` and
`block_list[email]` replace that one entry, and an empty value clears (`blocked_countries=`,
`max_amount[usd]=`, `block_list[email]=`). The change is validated whole before anything is
written (a bad entry is a 400 naming it, and nothing changes), committed, then pushed to every
FraudScorer so the next payment is scored with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from typing import Any

from starlette.responses import Response

from actors.errors import InvalidRequest
from actors.fraud import rules as risk_rules
from actors.fraud.rules import LIST_KINDS, MAX_LIST_ENTRIES, RiskRules
from actors.payments.money import MAX_AMOUNT, currency
from gateway import validation as v
from gateway.endpoint import Call, merchant_endpoint
from gateway.responses import JSONResponse
from gateway.routes.spec import ApiRoute, Param

log = logging.getLogger("paygate.gateway.risk")

_FIELDS = ("block_score", "review_score", "blocked_countries", "max_amount", "allow_list", "block_list")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9]{6,64}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_PUSH_TIMEOUT_S = 5.0


def _invalid(message: str, param: str, code: str = "parameter_invalid_string") -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def _score(params: dict[str, Any], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    text = str(raw)
    if isinstance(raw, bool) or not text.isdigit():
        raise _invalid(f"Invalid integer: {text[:40]}", name, "parameter_invalid_integer")
    value = int(text)
    if not 1 <= value <= 100:
        raise _invalid(f"{name} must be between 1 and 100 (100: never on score alone).", name,
                       "parameter_invalid_integer")
    return value


def _array(raw: Any, param: str) -> list[Any]:
    """A list parameter; `""` clears it. Form bodies send `name[]=a&name[]=b` or `name[0]=a`."""
    if raw == "" or raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid(f"Invalid array: {param} must be a list (for example {param}[]=value).", param)
    if len(raw) > MAX_LIST_ENTRIES:
        raise _invalid(f"{param} can have at most {MAX_LIST_ENTRIES} entries.", param)
    return raw


def _countries(raw: Any) -> tuple[str, ...]:
    result = []
    for i, value in enumerate(_array(raw, "blocked_countries")):
        code = str(value).strip().upper() if isinstance(value, str) else ""
        if not _COUNTRY.match(code):
            raise _invalid(f"Invalid country: {str(value)[:20]!r} is not a two-letter ISO 3166-1 code.",
                           f"blocked_countries[{i}]")
        result.append(code)
    return tuple(sorted(set(result)))


def _max_amount(raw: Any, current: dict[str, int]) -> dict[str, int]:
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise _invalid("Invalid max_amount: must be a hash of currency to amount, e.g. max_amount[usd]=50000.",
                       "max_amount")
    result = dict(current)
    for key, value in raw.items():
        param, code = f"max_amount[{key}]", str(key).lower()
        if currency(code) is None:
            raise _invalid(f"Invalid currency: {code[:10]}.", param)
        if value in ("", None):
            result.pop(code, None)
            continue
        text = str(value)
        if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_AMOUNT:
            raise _invalid(f"Invalid amount: {param} must be an integer from 1 to {MAX_AMOUNT} in minor units.",
                           param, "parameter_invalid_integer")
        result[code] = int(text)
    return result


def _entry(kind: str, value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"Invalid {kind}: entries must be non-empty strings.", param)
    text = value.strip()
    if kind == "ip_address":
        try:
            network = ipaddress.ip_network(text, strict=False) if "/" in text else None
            return str(network) if network else str(ipaddress.ip_address(text))
        except ValueError:
            raise _invalid(f"Invalid IP address or CIDR range: {text[:60]!r}.", param) from None
    if kind == "email":
        if len(text) > 254 or not _EMAIL.match(text):
            raise _invalid(f"Invalid email address: {text[:60]!r}.", param)
        return text.lower()
    if kind == "fingerprint":
        if not _FINGERPRINT.match(text):
            raise _invalid(f"Invalid card fingerprint: {text[:70]!r} (the PaymentMethod's card.fingerprint).",
                           param)
        return text
    if len(text) > 200 or any(ord(ch) < 32 for ch in text):
        raise _invalid("Invalid device_id: at most 200 printable characters.", param)
    return text


def _lists(raw: Any, name: str, current: dict[str, list[str]]) -> dict[str, list[str]]:
    if raw == "":
        return {kind: [] for kind in LIST_KINDS}
    if not isinstance(raw, dict):
        raise _invalid(f"Invalid {name}: must be a hash of {', '.join(LIST_KINDS)} to lists, "
                       f"e.g. {name}[email][]=someone@example.com.", name)
    result = {kind: list(current.get(kind, [])) for kind in LIST_KINDS}
    for kind, entries in raw.items():
        if kind not in LIST_KINDS:
            raise InvalidRequest(f"Received unknown parameter: {name}[{kind}]", code="parameter_unknown",
                                 param=f"{name}[{kind}]")
        values = [_entry(kind, e, f"{name}[{kind}][{i}]") for i, e in enumerate(_array(entries, f"{name}[{kind}]"))]
        result[kind] = list(dict.fromkeys(values))
    return result


def _merge(params: dict[str, Any], current: RiskRules) -> RiskRules:
    """The rules after this update, validated whole; raises before anything is written."""
    block_score = _score(params, "block_score")
    review_score = _score(params, "review_score")
    merged = RiskRules(
        block_score=current.block_score if block_score is None else block_score,
        review_score=current.review_score if review_score is None else review_score,
        blocked_countries=(_countries(params["blocked_countries"]) if "blocked_countries" in params
                           else current.blocked_countries),
        max_amount=(_max_amount(params["max_amount"], dict(current.max_amount)) if "max_amount" in params
                    else current.max_amount),
        allow_list=(_lists(params["allow_list"], "allow_list", dict(current.allow_list)) if "allow_list" in params
                    else current.allow_list),
        block_list=(_lists(params["block_list"], "block_list", dict(current.block_list)) if "block_list" in params
                    else current.block_list),
    )
    if merged.review_score > merged.block_score:
        raise _invalid(f"review_score ({merged.review_score}) must be less than or equal to block_score "
                       f"({merged.block_score}).", "review_score" if review_score is not None else "block_score",
                       "parameter_invalid_integer")
    return merged


@merchant_endpoint
async def retrieve(call: Call) -> Response:
    v.reject_unknown(call.params, ())
    rules = await risk_rules.load_rules(call.state.pool, call.merchant_id)
    return JSONResponse(rules.api_object(call.merchant_id))


@merchant_endpoint
async def update(call: Call) -> Response:
    v.reject_unknown(call.params, _FIELDS)
    async with call.state.pool.acquire() as conn, conn.transaction():
        # one writer per merchant at a time, so two concurrent updates both take effect
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('risk_rules:' || $1))", call.merchant_id)
        current = await risk_rules.load_rules(conn, call.merchant_id)
        saved = await risk_rules.save_rules(conn, call.merchant_id, _merge(call.params, current))
    await _push(call, saved)
    return JSONResponse(saved.api_object(call.merchant_id))


async def _push(call: Call, rules: RiskRules) -> None:
    scorers = [h for name, h in call.state.actors.items() if name.startswith("fraud-scorer-")]
    if not scorers:
        return
    try:
        await asyncio.wait_for(asyncio.gather(
            *[h.set_rules.remote(call.merchant_id, rules.to_json(), rules.updated) for h in scorers]),
            _PUSH_TIMEOUT_S)
    except Exception as error:  # committed anyway; scorers reload it within their cache TTL
        log.warning("pushing risk rules to the scorers failed (%s); they reload within 30 s",
                    type(error).__name__)


_TAGS = ("risk",)
ROUTES = [
    ApiRoute("/v1/risk/rules", "GET", retrieve, "Retrieve the merchant's risk rules (extension)",
             returns="risk_rules", tags=_TAGS),
    ApiRoute("/v1/risk/rules", "POST", update, "Update the merchant's risk rules (extension)",
             (Param("block_score", "integer", description="block when the risk score is at least this (1-100)"),
              Param("review_score", "integer", description="manual_review when at least this (1-100)"),
              Param("blocked_countries", "array", description="two-letter codes: card or IP country"),
              Param("max_amount", "object", description="max_amount[currency]=minor units"),
              Param("allow_list", "object", description="allow_list[fingerprint|ip_address|email|device_id][]"),
              Param("block_list", "object", description="block_list[fingerprint|ip_address|email|device_id][]")),
             returns="risk_rules", tags=_TAGS),
]
