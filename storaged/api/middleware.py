"""The one middleware every request passes through, the one place errors become HTTP responses,
and the access-token gate.

Protocol of a request (:class:`Front`, one coroutine frame per request: each layer of middleware
aiohttp chains costs a frame and a call, which the profile of 4 KiB GETs showed as ~10 % a layer):

1. The in-flight count goes up (a shutdown waits for it to reach 0; ``InFlight``).
2. A subtree hook whose path matches (the tus family's ``/files``) may refuse from the head alone
   (412 for another protocol version) before anything else, the token included.
3. The token gate (when a token is set): 401, or 429 for a throttled address.
4. The handler.  What it raises is rendered here, in the family's error shape: domain errors
   with their status; aiohttp's 4xx/5xx (404/405 of the router included); bodies aiohttp cannot
   parse (400); disk faults (ENOSPC/EDQUOT → 507, EROFS/EIO → 503), from the OSError itself or
   anywhere in an exception's chain (``storaged.errors.storage_fault``), so no handler needs its
   own copy; anything else 500.  A client that went away (ConnectionResetError on a closing
   transport), a cancelled handler, a redirect and a JSON HTTPException propagate unchanged.
   Listings that skip damaged records say so in the ``Storaged-Skipped-Records`` header
   (``storaged.store.damage``).
5. The subtree hook decorates the answer (tus headers, CORS) — errors, refusals and propagated
   HTTPExceptions too.
6. Observers (``ops``' request metrics) see the method, the route, the status the client gets
   (499 when the handler was cancelled: the client went away) and the seconds to the answer.
7. The in-flight count goes down.

Each concern stays with its owner: the tus family registers its hook (``Front.on_subtree``),
``ops`` its observer (``Front.observers``); this module knows neither.
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
from typing import Awaitable, Callable, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from storaged.errors import StoragedError, storage_fault
from storaged.store import damage

log = logging.getLogger("storaged.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Observer = Callable[[web.Request, int, float], None]
OPEN_PATHS = {"/healthz"}
SKIPPED_HEADER = "Storaged-Skipped-Records"
MAX_SKIPPED_NAMES = 20


class InFlight:
    """Counts requests being handled, so shutdown can wait for them before closing connections."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


class SubtreeHook(Protocol):
    """What a family adds to every request under its path subtree (see the module's protocol)."""

    def refuse(self, request: web.Request) -> web.StreamResponse | None: ...

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None: ...


class Front:
    """The one middleware (see the module's protocol)."""

    def __init__(self, inflight: InFlight, gate: Callable[[web.BaseRequest], web.Response | None] | None) -> None:
        self.inflight = inflight
        self.gate = gate
        self.observers: list[Observer] = []
        self._subtrees: list[tuple[str, str, SubtreeHook]] = []

    def on_subtree(self, path: str, hook: SubtreeHook) -> None:
        """``hook`` for ``path`` and every path under it (``/files`` and ``/files/…``)."""
        self._subtrees.append((path, path.rstrip("/") + "/", hook))

    def _hook(self, path: str) -> SubtreeHook | None:
        for exact, prefix, hook in self._subtrees:
            if path == exact or path.startswith(prefix):
                return hook
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        inflight = self.inflight
        inflight.count += 1
        inflight.idle.clear()
        status = 500
        hook = self._hook(request.path) if self._subtrees else None
        try:
            response = hook.refuse(request) if hook is not None else None
            if response is None and self.gate is not None:
                response = self.gate(request)
            if response is None:
                skipped: list[str] = []
                token = damage.SKIPPED.set(skipped)
                try:
                    response = await handler(request)
                except BaseException as exc:
                    response = error_answer(request, exc)
                    if response is None:
                        raise
                finally:
                    damage.SKIPPED.reset(token)
                if skipped and not response.prepared:
                    names = sorted(set(skipped))
                    response.headers[SKIPPED_HEADER] = " ".join(names[:MAX_SKIPPED_NAMES]) + (
                        f" (+{len(names) - MAX_SKIPPED_NAMES} more)" if len(names) > MAX_SKIPPED_NAMES else "")
            if hook is not None:
                hook.decorate(request, response)
            status = response.status
            return response
        except web.HTTPException as exc:
            if hook is not None:
                hook.decorate(request, exc)
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            inflight.count -= 1
            if inflight.count == 0:
                inflight.idle.set()
            if self.observers:
                seconds = time.perf_counter() - began
                for observe in self.observers:
                    observe(request, status, seconds)


def error_response(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error_message": message, **extra}, status=status)


def _fault_response(request: web.Request, exc: BaseException) -> web.Response | None:
    fault = storage_fault(exc)
    if fault is None:
        return None
    log.error("%s %s: %s (%s)", request.method, request.path, fault.message, exc)
    return error_response(fault.status, fault.message, **fault.extra)


def error_answer(request: web.Request, exc: BaseException) -> web.Response | None:
    """The error-shaped answer for what a handler raised, or None: let it propagate (step 4)."""
    if isinstance(exc, StoragedError):
        return error_response(exc.status, exc.message, **exc.extra)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.content_type == "application/json":
            return None
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        resp = error_response(exc.status, exc.reason)
        resp.headers.update(headers)
        return resp
    if isinstance(exc, HttpProcessingError):
        # A body aiohttp cannot parse (e.g. a multipart part with an invalid header line) is the
        # client's error, not ours.
        if not 400 <= (exc.code or 0) < 500:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
            return error_response(500, "internal error")
        return error_response(exc.code, f"malformed request body: {exc.message}")
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionResetError) or request.transport is None or request.transport.is_closing():
            return None
    elif not isinstance(exc, Exception):
        return None  # cancellation, exits
    if (resp := _fault_response(request, exc)) is not None:
        return resp
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
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
