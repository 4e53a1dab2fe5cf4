"""Videostreams catalogue (specs/videostreams.md): /api/v1/videostreams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator

from aiohttp import web

from storaged.api.bodies import json_object
from storaged.api.keys import CONFIG, Deps
from storaged.errors import BadRequest
from storaged.videostreams import times
from storaged.videostreams.provider import VideostreamsProvider
from storaged.videostreams.service import RECORD_SCHEMA, VideostreamCatalogue

log = logging.getLogger("storaged.videostreams")
VIDEOSTREAMS = web.AppKey("videostreams", VideostreamCatalogue)
MAX_LIMIT = 10_000
BASE = "/api/v1/videostreams"
RECORD_KEYS = tuple(RECORD_SCHEMA["properties"])  # what format=key1,key2 may name
routes = web.RouteTableDef()


PROVIDER = VideostreamsProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes and services to the app; offer its catalogue to the families set up later."""
    app[VIDEOSTREAMS] = deps.videostreams = VideostreamCatalogue(deps.layout)
    provider = PROVIDER(deps.layout, deps.config)
    provider.catalogue = deps.videostreams
    deps.providers.append(provider)
    app.cleanup_ctx.append(_catalogue_ctx)
    app.add_routes(routes)


async def _catalogue_ctx(app: web.Application) -> AsyncIterator[None]:
    # The index is built in the background so the rest of the daemon serves at
    # once; every catalogue call awaits the same load, so a videostreams
    # request that comes early waits for it instead of seeing an empty catalogue.
    catalogue = app[VIDEOSTREAMS]
    task = asyncio.create_task(catalogue.load_then_check(), name="videostreams-load")
    task.add_done_callback(_log_failure)
    yield
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await catalogue.close()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("videostreams: loading the catalogue failed (retried on the next request): %s",
                  task.exception())


def _only(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    for name in body:
        if name == "id":
            raise BadRequest("id is read-only", field="id")
        if name not in allowed:
            raise BadRequest(f"unknown field for {what}: {name}", field=str(name))


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return request.app[CONFIG].videostreams_page_size
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_LIMIT}, not {raw!r}", field="limit")
    return int(raw)


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset")
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest(f"offset must be a non-negative integer, not {raw!r}", field="offset")
    return int(raw)


def _format(request: web.Request):
    """OpenFish's ``format=key1,key2``: a function keeping only those keys of a record (None: all)."""
    raw = request.query.get("format")
    if raw is None or raw == "":
        return None
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = [k for k in keys if k not in RECORD_KEYS]
    if unknown or not keys:
        raise BadRequest(f"format names unknown keys {unknown}; allowed: {', '.join(RECORD_KEYS)}", field="format")
    return lambda record: {k: record[k] for k in keys}


@routes.get(BASE)
async def query(request: web.Request) -> web.Response:
    """Videostreams overlapping a time span (open-ended bounds, capture source filter), by start, in
    OpenFish's list envelope ``{results, offset, limit, total}``."""
    q = request.query
    bounds = []
    for name in ("timespan[start]", "timespan[end]"):
        raw = q.get(name)
        bounds.append(None if raw is None or raw == "" else times.parse_us(raw, name, plus_as_space=True))
    source = q.get("capturesource")
    if source is not None and source != "":
        if not source.isdigit():
            raise BadRequest("malformed capturesource: expected a positive integer id", field="capturesource")
        source_id: int | None = int(source)
    else:
        source_id = None
    limit, offset, select = _limit(request), _offset(request), _format(request)
    page = await request.app[VIDEOSTREAMS].query(bounds[0], bounds[1], source_id, limit, q.get("cursor"), offset)
    headers = {}
    if page.next_cursor is not None:
        headers["X-Next-Cursor"] = page.next_cursor
        rest = request.rel_url.query.copy()
        rest.popall("offset", None)
        rest["cursor"] = page.next_cursor
        headers["Link"] = f'<{request.rel_url.with_query(rest)}>; rel="next"'
    items = page.items if select is None else [select(r) for r in page.items]
    return web.json_response({"results": items, "offset": offset, "limit": limit, "total": page.total,
                              "next_cursor": page.next_cursor}, headers=headers)


@routes.post(BASE)
async def create(request: web.Request) -> web.Response:
    """Create a videostream (stream_url and startTime required); answers the record with its id."""
    return web.json_response(await request.app[VIDEOSTREAMS].create(await json_object(request)))


@routes.post(BASE + "/live")
async def start_live(request: web.Request) -> web.Response:
    """Start a live videostream: start = now, no end."""
    body = await json_object(request)
    _only(body, ("stream_url", "capturesource", "startTime"), "a live stream")
    if "stream_url" not in body:
        raise BadRequest("stream_url is required", field="stream_url")
    record = await request.app[VIDEOSTREAMS].start_live(body["stream_url"], body.get("capturesource"),
                                                        body.get("startTime"))
    return web.json_response(record)


@routes.patch(BASE + "/{id}/live")
async def end_live(request: web.Request) -> web.Response:
    """End a live videostream: end = now (409 if it already ended)."""
    catalogue = request.app[VIDEOSTREAMS]
    record_id = catalogue.parse_id(request.match_info["id"])
    body = await json_object(request, optional=True)
    _only(body, ("endTime",), "ending a live stream")
    if "endTime" in body and body["endTime"] is None:
        raise BadRequest("endTime cannot be null here", field="endTime")
    return web.json_response(await catalogue.end_live(record_id, body.get("endTime")))


@routes.get(BASE + "/{id}")
async def get(request: web.Request) -> web.Response:
    """One videostream (``format=key1,key2`` selects keys)."""
    record = await request.app[VIDEOSTREAMS].get(request.match_info["id"])
    select = _format(request)
    return web.json_response(record if select is None else select(record))


@routes.patch(BASE + "/{id}")
async def update(request: web.Request) -> web.Response:
    """Update a videostream's fields (e.g. a new stream_url)."""
    catalogue = request.app[VIDEOSTREAMS]
    record_id = catalogue.parse_id(request.match_info["id"])
    return web.json_response(await catalogue.update(record_id, await json_object(request)))


@routes.delete(BASE + "/{id}")
async def delete(request: web.Request) -> web.Response:
    """Delete a videostream."""
    catalogue = request.app[VIDEOSTREAMS]
    record_id = catalogue.parse_id(request.match_info["id"])
    await catalogue.delete(record_id)
    return web.json_response({"id": record_id, "deleted": True})
