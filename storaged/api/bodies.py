"""Request bodies: the one JSON decoder every family uses, so they refuse the same things the same way."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from storaged.errors import BadRequest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON document strictly (no NaN/Infinity); BadRequest when it is not JSON."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body must be a JSON object (it is not valid JSON: {exc})") from None


async def json_value(request: web.Request) -> Any:
    """The JSON body, or None when there is none."""
    raw = await request.read()
    return parse_json(raw) if raw.strip() else None


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; ``optional`` lets an empty body stand for ``{}``."""
    body = await json_value(request)
    if body is None and optional:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
