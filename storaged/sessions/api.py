"""Sessions family (specs/sessions-and-races.md): sessions, races, events and per-race splitting.

Handlers only: parse ids, bodies and queries, call storaged.sessions.service, render JSON.
"""

from __future__ import annotations

import math
from typing import Any, AsyncIterator

from aiohttp import web

from storaged.api.bodies import json_value
from storaged.api.keys import Deps
from storaged.errors import BadRequest
from storaged.sessions import landing
from storaged.sessions.provider import SessionsProvider
from storaged.sessions.service import MAX_SECONDS, SessionsService

SESSIONS = web.AppKey("sessions", SessionsService)
routes = web.RouteTableDef()


def _service(request: web.Request) -> SessionsService:
    return request.app[SESSIONS]


def _id(request: web.Request, name: str) -> int:
    svc = _service(request)
    return svc.sessions.parse_id(request.match_info[name], name)


def _created(obj: dict, path: str) -> web.Response:
    return web.json_response({"id": obj["id"]}, status=201, headers={"Location": path})


def _float_param(query, name: str) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequest(f"query parameter '{name}' must be a number of seconds, not {raw!r}")
    return max(-MAX_SECONDS, min(value, MAX_SECONDS))  # no event lies beyond: the answer is the same


PAGING = ("limit", "cursor")
MAX_PAGE = 10_000


def paging(request: web.Request) -> dict[str, int | None]:
    """``limit`` (1..10000, default: everything) and ``cursor`` (the last id of the previous page)."""
    query = request.query
    out: dict[str, int | None] = {"limit": None, "after": None}
    if "limit" in query:
        raw = query["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise BadRequest(f"limit must be an integer between 1 and {MAX_PAGE}, not {raw!r}")
        out["limit"] = int(raw)
    if "cursor" in query:
        out["after"] = _service(request).sessions.parse_id(query["cursor"], "cursor")
    return out


def list_response(request: web.Request, page: tuple[bytes, int | None]) -> web.Response:
    """A JSON array (the contract's shape); a further page is announced in ``Link`` and ``X-Next-Cursor``."""
    body, next_cursor = page
    headers = {}
    if next_cursor is not None:
        url = request.rel_url.update_query(cursor=str(next_cursor))
        headers = {"Link": f'<{url}>; rel="next"', "X-Next-Cursor": str(next_cursor)}
    return web.Response(body=body, content_type="application/json", headers=headers)


def only(request: web.Request, allowed: tuple[str, ...]) -> None:
    for key in request.query:
        if key not in allowed:
            raise BadRequest(f"unknown query parameter '{key}' (allowed: {', '.join(allowed)})")


def event_filters(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    query = request.query
    only(request, allowed + PAGING)
    svc = _service(request)
    out: dict[str, Any] = {**paging(request),
        "t_from": _float_param(query, "from"),
        "t_to": _float_param(query, "to"),
        "type": query.get("type"),
        "race_id": svc.races.parse_id(query["race"], "race") if "race" in query else None,
    }
    if "session" in allowed:
        out["session_id"] = svc.sessions.parse_id(query["session"], "session") if "session" in query else None
    return out


# -- sessions ----------------------------------------------------------------------
@routes.get("/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """All sessions, in id order (``limit``/``cursor`` page through them)."""
    only(request, PAGING)
    return list_response(request, _service(request).list_sessions(**paging(request)))


@routes.post("/sessions")
async def create_session(request: web.Request) -> web.Response:
    """Create a session; answers its id."""
    session = await _service(request).create_session(await json_value(request))
    return _created(session, f"/sessions/{session['id']}")


@routes.get("/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    """One session."""
    return web.json_response(await _service(request).get_session(_id(request, "session_id")))


@routes.put("/sessions/{session_id}")
async def update_session(request: web.Request) -> web.Response:
    """Update a session's updatable properties."""
    session_id = _id(request, "session_id")
    return web.json_response(await _service(request).update_session(session_id, await json_value(request)))


@routes.delete("/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    """Delete a session with its races, events and split jobs."""
    session = await _service(request).delete_session(_id(request, "session_id"))
    return web.json_response({"id": session["id"], "deleted": True})


# -- races ---------------------------------------------------------------------------
@routes.get("/sessions/{session_id}/races")
async def list_races(request: web.Request) -> web.Response:
    """The races of a session, in id order (``limit``/``cursor`` page through them)."""
    only(request, PAGING)
    return list_response(request, await _service(request).list_races(_id(request, "session_id"), **paging(request)))


@routes.post("/sessions/{session_id}/races")
async def create_race(request: web.Request) -> web.Response:
    """Create a race in a session; answers its id."""
    session_id = _id(request, "session_id")
    race = await _service(request).create_race(session_id, await json_value(request))
    return _created(race, f"/races/{race['id']}")


@routes.get("/races/{race_id}")
async def get_race(request: web.Request) -> web.Response:
    """One race."""
    return web.json_response(await _service(request).get_race(_id(request, "race_id")))


@routes.put("/races/{race_id}")
async def update_race(request: web.Request) -> web.Response:
    """Update a race's updatable properties."""
    race_id = _id(request, "race_id")
    return web.json_response(await _service(request).update_race(race_id, await json_value(request)))


@routes.delete("/races/{race_id}")
async def delete_race(request: web.Request) -> web.Response:
    """Delete a race."""
    race = await _service(request).delete_race(_id(request, "race_id"))
    return web.json_response({"id": race["id"], "deleted": True})


# -- splitting -----------------------------------------------------------------------
@routes.post("/sessions/{session_id}/split_races")
async def split_races(request: web.Request) -> web.Response:
    """Cut every race out of the session video (a job; 202 with a status link)."""
    session_id = _id(request, "session_id")
    report = await _service(request).request_split(session_id, await json_value(request))
    return web.json_response(report, status=202, headers={"Location": report["status_url"]})


@routes.get("/sessions/{session_id}/split_races")
async def split_status(request: web.Request) -> web.Response:
    """Progress and result of the session's split job."""
    return web.json_response(await _service(request).split_status(_id(request, "session_id")))


# -- events --------------------------------------------------------------------------
@routes.get("/sessions/{session_id}/events")
async def list_session_events(request: web.Request) -> web.Response:
    """The events of a session (same filters as /events)."""
    session_id = _id(request, "session_id")
    filters = event_filters(request, ("race", "type", "from", "to"))
    return list_response(request, await _service(request).session_events(session_id, **filters))


@routes.post("/sessions/{session_id}/events")
async def create_event(request: web.Request) -> web.Response:
    """Record an event in a session; answers its id."""
    session_id = _id(request, "session_id")
    event = await _service(request).create_event(session_id, await json_value(request))
    return _created(event, f"/events/{event['id']}")


@routes.get("/events")
async def query_events(request: web.Request) -> web.Response:
    """Events by session, race, type and time range (overlap semantics)."""
    filters = event_filters(request, ("session", "race", "type", "from", "to"))
    return list_response(request, _service(request).query_events(**filters))


@routes.get("/events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    """One event."""
    return web.json_response(await _service(request).get_event(_id(request, "event_id")))


@routes.put("/events/{event_id}")
async def update_event(request: web.Request) -> web.Response:
    """Update an event."""
    event_id = _id(request, "event_id")
    return web.json_response(await _service(request).update_event(event_id, await json_value(request)))


@routes.delete("/events/{event_id}")
async def delete_event(request: web.Request) -> web.Response:
    """Delete an event."""
    event = await _service(request).delete_event(_id(request, "event_id"))
    return web.json_response({"id": event["id"], "deleted": True})


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SESSIONS]
    await service.start()
    yield
    await service.close()


PROVIDER = SessionsProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes and services to the app; register its provider."""
    app[SESSIONS] = SessionsService(deps.layout, deps.objects, deps.jobs, deps.ensure_local)
    deps.providers.append(PROVIDER(deps.layout, deps.config))
    deps.landing_sections.append((landing.ORDER, landing.sessions_section(app[SESSIONS])))
    app.cleanup_ctx.append(_sessions_ctx)
    app.add_routes(routes)
