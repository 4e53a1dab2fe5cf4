"""The one place errors become HTTP responses, and the access-token gate."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from storaged.errors import StoragedError

log = logging.getLogger("storaged.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = {"/healthz"}


class InFlight:
    """Counts requests being handled, so shutdown can wait for them before closing connections."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self.idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if self.count == 0:
                self.idle.set()


def error_response(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error_message": message, **extra}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoragedError as exc:
        return error_response(exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        resp = error_response(exc.status, exc.reason)
        resp.headers.update(headers)
        return resp
    except HttpProcessingError as exc:
        # A body aiohttp cannot parse (e.g. a multipart part with an invalid header line) is the
        # client's error, not ours.
        if not 400 <= (exc.code or 0) < 500:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal error")
        return error_response(exc.code, f"malformed request body: {exc.message}")
    except (ConnectionResetError, OSError) as exc:
        if isinstance(exc, ConnectionResetError) or request.transport is None or request.transport.is_closing():
            raise
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


def token_middleware(token: str):
    """Bearer token, or HTTP Basic with the token as password (so a browser can browse)."""
    expected = token.encode()

    def authorised(header: str) -> bool:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return hmac.compare_digest(value.strip().encode(), expected)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            _, _, password = decoded.partition(b":")
            return hmac.compare_digest(password, expected)
        return False

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or authorised(request.headers.get("Authorization", "")):
            return await handler(request)
        resp = error_response(401, "unauthorized: send Authorization: Bearer <token>")
        resp.headers["WWW-Authenticate"] = 'Basic realm="storaged", charset="UTF-8"'
        return resp

    return middleware
