"""Request bodies: the one JSON decoder every family uses, so they refuse the same things the same way.

A JSON body is bounded before anything deep happens.  The read stops at
``MAX_BYTES``; then a pre-check made of C-speed passes (regular expressions
and ``bytes.count``, never recursion) bounds the number of items, the length
of numbers and strings and the nesting depth, so ``json.loads`` only ever
sees a document it can parse in bounded time, memory and stack.  The decoder
itself refuses what would parse but hurt later: duplicate keys (two readers
could disagree on which one counts), numbers that overflow to infinity
(``1e999999``), NaN/Infinity, and lone UTF-16 surrogates (``"\\ud800"``,
which no UTF-8 file or answer can hold).  Every refusal is a
:class:`BadRequest` (400 in the family's error shape) naming the limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from aiohttp import web

from storaged.errors import BadRequest

MAX_BYTES = 1024 * 1024     # a whole JSON body
MAX_ITEMS = 10_000          # array items + object members + containers, summed over the document
MAX_DEPTH = 32              # nested arrays/objects
MAX_STRING = 64 * 1024      # characters of one string, escapes included
MAX_NUMBER = 64             # characters of one number
IN_LOOP = 64 * 1024         # larger bodies are checked and parsed in a thread (up to ~0.2 s for 1 MiB)

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_LONG_NUMBER = re.compile(rb"[-+0-9.eE]{%d,}" % (MAX_NUMBER + 1))
_BRACKETS = re.compile(rb"[^\[\]{}]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse(what: str) -> BadRequest:
    return BadRequest(f"the body must be a JSON object ({what})")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:40]!r}")
            seen.add(key)
    return out


def precheck(raw: bytes) -> None:
    """Refuse a document beyond the limits, in time linear in its size and without recursion."""
    if len(raw) > MAX_BYTES:
        raise _refuse(f"larger than {MAX_BYTES} bytes")
    # Each string has two delimiters and an escaped quote adds one '"' and one '\\"', so this is at
    # least the number of strings; a document of n items holds at most 2n + 1 of them.
    if raw.count(b'"') - raw.count(b'\\"') > 2 * MAX_ITEMS + 1:
        raise _refuse(f"more than {MAX_ITEMS} items")
    outside = _STRING.sub(b'""', raw)
    items = outside.count(b",") + outside.count(b"[") + outside.count(b"{")
    if items > MAX_ITEMS:
        raise _refuse(f"more than {MAX_ITEMS} items")
    if len(raw) - len(outside) > MAX_STRING and any(len(s) > MAX_STRING + 2 for s in _STRING.findall(raw)):
        raise _refuse(f"a string longer than {MAX_STRING} characters")
    if _LONG_NUMBER.search(outside):
        raise _refuse(f"a number longer than {MAX_NUMBER} characters")
    depth = 0
    for byte in _BRACKETS.sub(b"", outside):  # at most MAX_ITEMS + closers
        if byte in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _refuse(f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _check_strings(value: Any) -> None:
    """Walk the (already bounded) document iteratively; refuse lone surrogates in keys and strings."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _refuse("a lone UTF-16 surrogate in a string")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(raw: bytes) -> Any:
    """Decode a JSON document strictly within the limits; BadRequest when it is not JSON or beyond them."""
    precheck(raw)
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_pairs)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body must be a JSON object (it is not valid JSON: {exc})") from None
    _check_strings(value)
    return value


async def read_body(request: web.Request, limit: int = MAX_BYTES) -> bytes:
    """The whole body, refused as soon as it grows past ``limit`` (so a huge one is never held)."""
    if request.content_length is not None and request.content_length > limit:
        raise _refuse(f"larger than {limit} bytes")
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            raise _refuse(f"larger than {limit} bytes")
    return bytes(raw)


async def json_value(request: web.Request) -> Any:
    """The JSON body, or None when there is none."""
    raw = await read_body(request)
    if not raw.strip():
        return None
    return parse_json(raw) if len(raw) <= IN_LOOP else await asyncio.to_thread(parse_json, raw)


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; ``optional`` lets an empty body stand for ``{}``."""
    body = await json_value(request)
    if body is None and optional:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
