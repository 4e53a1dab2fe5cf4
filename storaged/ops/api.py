"""Operations: pins, /metrics, the janitor task and the request-metrics middleware."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from aiohttp import web

from storaged.web import openapi
from storaged.api.keys import CONFIG, JOBS, LAYOUT
from storaged.ops import pins
from storaged.ops.janitor import Janitor, JanitorTask, disk
from storaged.ops.metrics import CONTENT_TYPE, Metrics, walk_usage
from storaged.store.layout import check_object_id

log = logging.getLogger("storaged.ops")

JANITOR = web.AppKey("janitor", JanitorTask)
METRICS = web.AppKey("metrics", Metrics)
routes = web.RouteTableDef()


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    janitor = JanitorTask(Janitor(app[LAYOUT], config), config.janitor_interval)
    app[JANITOR] = janitor
    app[METRICS] = Metrics(lambda: _live(app))
    # Outermost, so it sees the status the client gets (after the error middleware rendered it).
    app.middlewares.insert(0, _metrics_middleware)
    app.cleanup_ctx.append(_ops_ctx)
    app.add_routes(routes)
    pin_answers = {"200": openapi.answer("the pin", openapi.obj(file_id={"type": "string"}, pinned={"type": "boolean"})),
                   "400": "malformed file_id", "404": "file not found"}
    openapi.describe("PUT /upload/{file_id}/pin", responses=pin_answers)
    openapi.describe("DELETE /upload/{file_id}/pin", responses=pin_answers)
    openapi.describe("GET /metrics", responses={"200": openapi.answer("Prometheus text format", {"type": "string"},
                                                                      "text/plain")})


def poke_janitor(app: web.Application) -> None:
    """Ask for a janitor pass now (a write met a full disk).  Families may call this too."""
    janitor = app.get(JANITOR)
    if janitor is not None:
        janitor.poke()


async def _ops_ctx(app: web.Application) -> AsyncIterator[None]:
    janitor = app[JANITOR]
    janitor.start()
    walker = asyncio.create_task(_usage_loop(app), name="usage-walk")
    try:
        yield
    finally:
        walker.cancel()
        await asyncio.gather(walker, return_exceptions=True)
        await janitor.close()


async def _usage_loop(app: web.Application) -> None:
    config = app[CONFIG]
    interval = max(1.0, config.metrics_interval)
    while True:
        try:
            app[METRICS].usage = await asyncio.to_thread(walk_usage, app[LAYOUT], config)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("usage walk failed; trying again later")
        await asyncio.sleep(interval)


def _live(app: web.Application) -> dict[str, Any]:
    out: dict[str, Any] = {"janitor": app[JANITOR].janitor}
    jobs = app.get(JOBS)
    if jobs is not None:
        out["jobs_supervised"] = len(jobs.running_jobs())
    try:
        from storaged.recording.api import STREAMS
    except ImportError:
        STREAMS = None
    streams = app.get(STREAMS) if STREAMS is not None else None
    if streams is not None:
        recorders = list(getattr(streams, "_recorders", {}).values())
        out["recordings_active"] = sum(1 for r in recorders
                                       if getattr(r, "proc", None) is not None and r.proc.alive())
    try:
        from storaged.camera.api import CAMERA
    except ImportError:
        CAMERA = None
    camera = app.get(CAMERA) if CAMERA is not None else None
    if camera is not None:
        sups = list(camera.motion.supervisors.values())
        out["motion_cameras_active"] = sum(1 for s in sups if s.running)
        out["camera_restarts"] = sum(s.restarts for s in sups)
    return out


def route_label(request: web.Request) -> str:
    """The matched route's template (``/upload/{file_id}``), never the raw path: bounded cardinality."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def _metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    began = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        request.app[METRICS].observe(request.method, route_label(request), status, time.perf_counter() - began)
        if status == 507:
            poke_janitor(request.app)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text format 0.0.4).

    Bytes and files per kind of data, objects and jobs come from a cached background walk
    (`metrics_interval`); request counts and latency are labelled by route template.
    """
    m = request.app[METRICS]
    m.disk = await asyncio.to_thread(disk, request.app[LAYOUT].root)
    body = await asyncio.to_thread(m.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.put("/upload/{file_id}/pin")
async def pin(request: web.Request) -> web.Response:
    """Pin a stored file: the janitor never deletes it (an explicit DELETE /upload/<id> still does)."""
    oid = check_object_id(request.match_info["file_id"])
    await asyncio.to_thread(pins.pin_blocking, request.app[LAYOUT], oid, True)
    return web.json_response({"file_id": oid, "pinned": True})


@routes.delete("/upload/{file_id}/pin")
async def unpin(request: web.Request) -> web.Response:
    """Unpin a stored file: it expires again like any upload."""
    oid = check_object_id(request.match_info["file_id"])
    await asyncio.to_thread(pins.pin_blocking, request.app[LAYOUT], oid, False)
    return web.json_response({"file_id": oid, "pinned": False})
