"""Request parameters: Stripe's form encoding with bracket notation (`metadata[order]=1`,
`expand[]=x`, `items[0][price]=p`) or a JSON body, both turned into one nested dict."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus

from gateway.errors import InvalidRequest

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
_MAX_DEPTH = 5

Params = dict[str, Any]
FORM = "application/x-www-form-urlencoded"


def parse_form(body: str) -> Params:
    """As `parse_qsl(body, keep_blank_values=True)` then bracket notation, in a quarter of the time:
    a pair is unquoted only if it holds `%` or `+`, a plain key skips the bracket pattern, and the
    walk that turns indexed hashes into lists runs only when some key part is an index."""
    result: Params = {}
    indexed = False
    for pair in body.split("&"):
        if not pair:
            continue
        raw_key, _, value = pair.partition("=")
        if "%" in raw_key:  # Stripe's SDKs escape a key's brackets: `card%5Bnumber%5D`
            raw_key = raw_key.replace("%5B", "[").replace("%5D", "]")
        raw_key, value = _unquoted(raw_key), _unquoted(value)
        if "[" in raw_key or "]" in raw_key or not raw_key or _is_index(raw_key):
            indexed |= _assign(result, raw_key, value)
        else:
            _set(result, raw_key, value, raw_key)  # a plain key: its path is itself
    return _lists_from_indexes(result) if indexed else result


def _is_index(part: str) -> bool:
    """`0`, `1`…: ASCII digits only (`²` is a digit to `isdigit`, and no number to `int`)."""
    return part.isascii() and part.isdigit()


def _unquoted(text: str) -> str:
    return unquote_plus(text) if "%" in text or "+" in text else text


def parse_json(body: bytes) -> Params:
    try:
        value = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("Invalid JSON received in the request body.", code="parameter_invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The JSON request body must be an object.", code="parameter_invalid_json")
    return value


def reject_nul(value: Any, name: str) -> None:
    """PostgreSQL text cannot hold NUL: say so with the parameter's name instead of failing later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"Invalid value for {name}: it contains a NUL character.",
                                 code="parameter_invalid_string", param=name)
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key, name)
            reject_nul(item, f"{name}[{key}]" if name else key)
    elif isinstance(value, list):
        for item in value:
            reject_nul(item, f"{name}[]")


def parse_body(content_type: str, body: bytes) -> Params:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        return parse_json(body)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("The request parameters are not valid UTF-8.") from None
    return parse_form(text)


def _set(node: Params, key: str, value: str, param: str) -> None:
    """The value at the end of a path; `param` (the path's first part) names it in the error."""
    if isinstance(node.get(key), dict):
        raise InvalidRequest(f"Parameter {param} was given as both a value and a hash.", param=param)
    node[key] = value


def _assign(target: Params, raw_key: str, value: str) -> bool:
    """Put `value` at `raw_key`'s path (`a[b][]`); True if a part of the path is all digits."""
    match = _KEY.match(raw_key)
    if not match:
        raise InvalidRequest(f"Invalid parameter name: {raw_key[:60]!r}", param=raw_key[:60])
    path = [match.group(1), *_PART.findall(match.group(2))]
    indexed = any(_is_index(part) for part in path)
    if len(path) > _MAX_DEPTH:
        raise InvalidRequest("Parameters are nested too deeply.", param=raw_key[:60])
    node = target
    for index, part in enumerate(path[:-1]):
        nxt = path[index + 1]
        child = node.get(part)
        if child is None:
            child = [] if nxt == "" else {}
            node[part] = child
        if isinstance(child, list):
            if nxt != "" or index + 1 != len(path) - 1:
                raise InvalidRequest(f"Invalid array parameter: {raw_key[:60]}", param=path[0])
            child.append(value)
            return indexed
        if not isinstance(child, dict):
            raise InvalidRequest(f"Parameter {path[0]} was given as both a value and a hash.", param=path[0])
        node = child
    _set(node, path[-1], value, path[0])
    return indexed


def _lists_from_indexes(value: Any, key: str = "") -> Any:
    """`items[0][x]` arrives as a dict keyed "0", "1"...; Stripe treats that as a list
    (but never metadata, whose keys are the merchant's own strings)."""
    if isinstance(value, dict):
        converted = {k: _lists_from_indexes(v, k) for k, v in value.items()}
        if key != "metadata" and converted and all(_is_index(k) for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    if isinstance(value, list):
        return [_lists_from_indexes(v) for v in value]
    return value
