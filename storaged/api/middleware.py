"""The one place errors become HTTP responses, and the access-token gate.

Disk faults (ENOSPC/EDQUOT → 507, EROFS/EIO → 503) are mapped here for every
route, from the OSError itself or anywhere in an exception's chain
(``storaged.errors.storage_fault``), so no handler needs its own copy.
Listings that skip damaged records say so in the ``Storaged-Skipped-Records``
header (``storaged.store.damage``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import time
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from storaged.errors import StoragedError, storage_fault
from storaged.store import damage

log = logging.getLogger("storaged.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = {"/healthz"}
SKIPPED_HEADER = "Storaged-Skipped-Records"
MAX_SKIPPED_NAMES = 20


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
    skipped: list[str] = []
    token = damage.SKIPPED.set(skipped)
    try:
        resp = await _render_errors(request, handler)
    finally:
        damage.SKIPPED.reset(token)
    if skipped and not resp.prepared:
        names = sorted(set(skipped))
        resp.headers[SKIPPED_HEADER] = " ".join(names[:MAX_SKIPPED_NAMES]) + (
            f" (+{len(names) - MAX_SKIPPED_NAMES} more)" if len(names) > MAX_SKIPPED_NAMES else "")
    return resp


def _fault_response(request: web.Request, exc: BaseException) -> web.Response | None:
    fault = storage_fault(exc)
    if fault is None:
        return None
    log.error("%s %s: %s (%s)", request.method, request.path, fault.message, exc)
    return error_response(fault.status, fault.message, **fault.extra)


async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        if (resp := _fault_response(request, exc)) is not None:
            return resp
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
    except Exception as exc:
        if (resp := _fault_response(request, exc)) is not None:
            return resp
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


class AuthThrottle:
    """Failed token attempts per client address, so a token cannot be guessed at network speed.

    A failure is a request whose ``Authorization`` header carries a wrong token (a request without
    one is not a guess).  An address's window opens at its first failure and lasts ``window``
    seconds; once it holds ``max_failures``, every request from that address but /healthz gets 429
    with ``Retry-After`` until the window ends, and no token is compared meanwhile (a right guess
    looks like a wrong one).  So at most ``max_failures`` guesses per window and address.  The
    start of each block is logged once.  Memory is bounded: at most ``MAX_CLIENTS`` addresses are
    remembered, stale ones dropped first.
    """

    MAX_CLIENTS = 10_000

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clients: dict[str, list[float]] = {}  # address -> [window start, failures]
        self.failures_total = 0
        self.refused_total = 0

    def retry_after(self, address: str) -> float:
        """Seconds the address must wait, 0 when it may try."""
        entry = self._clients.get(address)
        if entry is None or entry[1] < self.max_failures:
            return 0.0
        remaining = entry[0] + self.window - time.monotonic()
        if remaining <= 0:
            del self._clients[address]
            return 0.0
        return remaining

    def failed(self, address: str) -> None:
        self.failures_total += 1
        now = time.monotonic()
        entry = self._clients.get(address)
        if entry is None or now - entry[0] >= self.window:
            if entry is None and len(self._clients) >= self.MAX_CLIENTS:
                self._prune(now)
            entry = self._clients[address] = [now, 0]
        entry[1] += 1
        if entry[1] == self.max_failures:
            log.warning("%d wrong tokens from %s within %.0fs: refusing it (429) for %.0fs", entry[1], address,
                        now - entry[0], entry[0] + self.window - now)

    def blocked_clients(self) -> int:
        now = time.monotonic()
        return sum(1 for start, failures in self._clients.values()
                   if failures >= self.max_failures and now - start < self.window)

    def _prune(self, now: float) -> None:
        for address in [a for a, (start, _) in self._clients.items() if now - start >= self.window]:
            del self._clients[address]
        while len(self._clients) >= self.MAX_CLIENTS:  # oldest first (insertion order)
            del self._clients[next(iter(self._clients))]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def token_gate(token: str, throttle: AuthThrottle) -> Callable[[web.BaseRequest], web.Response | None]:
    """Bearer token, or HTTP Basic with the token as password (so a browser can browse).

    The gate answers the refusal (401, or 429 for a throttled address) or None to let the request in.
    It is shared by the middleware and by upload routes' ``Expect: 100-continue`` handlers, which
    run before any middleware and must refuse before the body is sent.
    Tokens are compared as SHA-256 digests with ``hmac.compare_digest``: constant time, and the
    length of the token is not revealed either.
    """
    expected = _digest(token.encode())

    def authorised(header: str) -> bool:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return hmac.compare_digest(_digest(value.strip().encode()), expected)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            _, _, password = decoded.partition(b":")
            return hmac.compare_digest(_digest(password), expected)
        return False

    def refusal(request: web.BaseRequest) -> web.Response | None:
        # A CORS preflight (OPTIONS) never carries credentials: browsers could not upload otherwise.
        if request.path in OPEN_PATHS or request.method == "OPTIONS":
            return None
        address = request.remote or "unknown"
        wait = throttle.retry_after(address)
        if wait > 0:
            throttle.refused_total += 1
            resp = error_response(429, "too many wrong tokens from this address: try again later")
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return resp
        header = request.headers.get("Authorization", "")
        if authorised(header):
            return None
        if header:
            throttle.failed(address)
        resp = error_response(401, "unauthorized: send Authorization: Bearer <token>")
        resp.headers["WWW-Authenticate"] = 'Basic realm="storaged", charset="UTF-8"'
        return resp

    return refusal


def token_middleware(refusal: Callable[[web.BaseRequest], web.Response | None]):
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request)
        return refused if refused is not None else await handler(request)

    return middleware
