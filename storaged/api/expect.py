"""``Expect: 100-continue``: refuse an upload that cannot succeed before its body is sent.

A client that sends ``Expect: 100-continue`` (curl does for bodies over 1 MiB,
``curl -T`` always) waits for ``100 Continue`` before the body. aiohttp
answers it from the route's expect handler, which runs *before* any
middleware, and by default says "continue" to everything — also to a request
whose path or method has no route, so a client learned it was refused only
after sending the whole body.

* ``continue_unless(*checks)`` builds an expect handler for a route: each
  check answers a refusal (or raises a StoragedError) or None; the first
  refusal is the final answer, in the error shape, and the connection is
  closed (the body never comes). Otherwise ``100 Continue``. The checks
  repeat what the handler and the token middleware would decide from the
  head alone (the token, a declared ``Content-Length`` over the limit).
* ``refuse_unroutable(app)`` makes a request without a route (404, 405) with
  ``Expect`` get that 404/405 instead of ``100 Continue``.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.web_urldispatcher import MatchInfoError

from storaged.api.keys import TOKEN_GATE
from storaged.api.middleware import error_response
from storaged.errors import StoragedError

Check = Callable[[web.Request], web.Response | None]


def _final(resp: web.Response) -> web.Response:
    resp.force_close()  # the client will not send the body: the connection cannot be reused
    return resp


def token_check(request: web.Request) -> web.Response | None:
    gate = request.app[TOKEN_GATE]
    return None if gate is None else gate(request)


def continue_unless(*checks: Check) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    async def expect_handler(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return _final(error_response(417, f"unknown Expect: {expect}"))
        for check in (token_check, *checks):
            try:
                refused = check(request)
            except StoragedError as exc:
                refused = error_response(exc.status, exc.message, **exc.extra)
            if refused is not None:
                return _final(refused)
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim answer is not part of the response's size
        return None

    return expect_handler


def refuse_unroutable(app: web.Application) -> None:
    resolve = app.router.resolve

    async def refuse_expect(request: web.Request) -> web.StreamResponse:
        exc = request.match_info.http_exception
        resp = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return _final(resp)

    async def resolve_expecting(request: web.Request):
        match = await resolve(request)
        if isinstance(match, MatchInfoError):
            # SystemRoute is made per request: replacing its expect handler touches no other request.
            match.route._expect_handler = refuse_expect
        return match

    def resolve_refusing_expect(request: web.Request):
        # A plain function: a request without Expect (nearly all) awaits the router's own resolve,
        # with no frame of ours around it.
        return resolve_expecting(request) if request.headers.get("Expect") else resolve(request)

    app.router.resolve = resolve_refusing_expect
