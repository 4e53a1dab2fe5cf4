"""Stream recording (specs/stream-recording.md): /streams."""

from __future__ import annotations

import functools
import math
from typing import Any, AsyncIterator

from aiohttp import web

from storaged.api.bodies import json_object
from storaged.api.keys import Deps
from storaged.config import ConfigError
from storaged.errors import BadRequest
from storaged.recording import clips, landing
from storaged.recording.clips import ClipService
from storaged.recording.provider import RecordingProvider
from storaged.recording.supervisor import StreamService

STREAMS = web.AppKey("streams", StreamService)
CLIPS = web.AppKey("stream_clips", ClipService)
routes = web.RouteTableDef()


# Segment names are sequence numbers, so any length works; below a second the files only multiply.
MIN_SEGMENT_TIME = 1.0


PROVIDER = RecordingProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes and services; runs appear as live videostreams in ``deps.videostreams``."""
    config = deps.config
    if config.stream_segment_time < MIN_SEGMENT_TIME:
        raise ConfigError(f"stream_segment_time must be at least {MIN_SEGMENT_TIME:g} s")
    app[STREAMS] = StreamService(deps.layout, config, deps.videostreams)
    app[CLIPS] = ClipService(app[STREAMS], deps.objects, deps.jobs, config.stream_clip_wait)
    deps.jobs.in_process(clips.KIND, functools.partial(clips.cut_clips, app[CLIPS]))
    provider = PROVIDER(deps.layout, config)
    provider.service = app[STREAMS]
    deps.providers.append(provider)
    deps.landing_sections.append((landing.ORDER, landing.streams_section(app[STREAMS])))
    app.cleanup_ctx.append(_streams_ctx)
    app.add_routes(routes)


async def _streams_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[STREAMS].open()
    yield
    await app[STREAMS].close()


async def params(request: web.Request) -> dict[str, Any]:
    """Parameters from the query string, a form or a JSON body (later sources win)."""
    out: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            out.update(await json_object(request, optional=True))
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            out.update({k: v for k, v in form.items() if isinstance(v, str)})
    return out


def timestamp(raw: Any, name: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a POSIX timestamp (seconds, e.g. 1700000000 or 1700000000.5)") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a POSIX timestamp (seconds, e.g. 1700000000 or 1700000000.5)")
    return value


def with_links(request: web.Request, answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("status") != "done":
        return {k: v for k, v in answer.items() if k != "clips"}
    base = f"{request.scheme}://{request.host}"
    clips = [{"link": base + c["download"], **c} for c in answer.get("clips", [])]
    return {**answer, "clips": clips}


@routes.get("/streams")
@routes.get("/streams/")
async def list_streams(request: web.Request) -> web.Response:
    """Every stream with its status."""
    return web.json_response({"result": await request.app[STREAMS].list()})


@routes.route("*", "/streams/create")
async def create(request: web.Request) -> web.Response:
    """Create a stream from a URL ffmpeg can read; answers its id."""
    if request.method not in ("GET", "POST"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    p = await params(request)
    record = await request.app[STREAMS].create(p.get("url"), p.get("description"))
    return web.json_response({"stream_id": record["id"]})


@routes.route("*", "/streams/{id}/start")
async def start(request: web.Request) -> web.Response:
    """Start recording the stream into segments."""
    if request.method not in ("GET", "POST"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    await request.app[STREAMS].start(request.match_info["id"])
    return web.json_response({"result": "ok"})


@routes.route("*", "/streams/{id}/stop")
async def stop(request: web.Request) -> web.Response:
    """Stop recording; the last segment is finalised."""
    if request.method not in ("GET", "POST"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    await request.app[STREAMS].stop(request.match_info["id"])
    return web.json_response({"result": "ok"})


@routes.get("/streams/{id}/status")
async def status(request: web.Request) -> web.Response:
    """The stream's status: contract fields plus recording, segments, bytes, restarts, gaps."""
    return web.json_response(await request.app[STREAMS].status(request.match_info["id"]))


@routes.get("/streams/{id}/get_clip")
async def get_clip(request: web.Request) -> web.Response:
    """Cut the recording between two POSIX times into clips (pending, processing, done)."""
    streams = request.app[STREAMS]
    await streams.record(request.match_info["id"])  # 404 before any parameter complaint
    q = request.query
    if "start" not in q:
        raise BadRequest("start is required (POSIX timestamp)")
    start = timestamp(q["start"], "start")
    stop = timestamp(q["stop"], "stop") if q.get("stop") not in (None, "") else None
    answer = await request.app[CLIPS].request(request.match_info["id"], start, stop, q.get("mode") or "copy")
    return web.json_response(with_links(request, answer))
