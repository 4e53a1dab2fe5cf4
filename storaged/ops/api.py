"""Operations: /metrics, the janitor task and the request metrics (an observer of the one middleware)."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from storaged.web import openapi
from storaged.api.keys import LAYOUT, Deps
from storaged.ops.janitor import Janitor, JanitorTask, disk
from storaged.ops.metrics import CONTENT_TYPE, Metrics, walk_usage

log = logging.getLogger("storaged.ops")

JANITOR = web.AppKey("janitor", JanitorTask)
METRICS = web.AppKey("metrics", Metrics)
routes = web.RouteTableDef()


def setup(app: web.Application, deps: Deps) -> None:
    """The janitor and /metrics over every provider the families registered (set up after them)."""
    config = deps.config
    janitor = JanitorTask(Janitor(deps.layout, config, deps.providers), config.janitor_interval)
    app[JANITOR] = janitor
    app[METRICS] = Metrics(lambda: {"janitor": janitor.janitor, "jobs_supervised": len(deps.jobs.running_jobs())},
                           providers=deps.providers)
    for collector in deps.collectors:
        app[METRICS].registry.register(collector)
    # The middleware calls it with the status the client gets (errors rendered, tus headers added).
    deps.front.observers.append(_request_observer(app[METRICS], app))
    app.cleanup_ctx.append(lambda app: _ops_ctx(app, deps))
    app.add_routes(routes)
    openapi.describe("GET /metrics", responses={"200": openapi.answer("Prometheus text format", {"type": "string"},
                                                                      "text/plain")})


def poke_janitor(app: web.Application) -> None:
    """Ask for a janitor pass now (a write met a full disk).  Families may call this too."""
    janitor = app.get(JANITOR)
    if janitor is not None:
        janitor.poke()


async def _ops_ctx(app: web.Application, deps: Deps) -> AsyncIterator[None]:
    janitor = app[JANITOR]
    janitor.start()
    walker = asyncio.create_task(_usage_loop(app, deps), name="usage-walk")
    try:
        yield
    finally:
        walker.cancel()
        await asyncio.gather(walker, return_exceptions=True)
        await janitor.close()


async def _usage_loop(app: web.Application, deps: Deps) -> None:
    interval = max(1.0, deps.config.metrics_interval)
    while True:
        try:
            app[METRICS].usage = await asyncio.to_thread(walk_usage, deps.layout, deps.config, deps.providers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("usage walk failed; trying again later")
        await asyncio.sleep(interval)


def route_label(request: web.Request) -> str:
    """The matched route's template (``/upload/{file_id}``), never the raw path: bounded cardinality."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def _request_observer(metrics: Metrics, app: web.Application):
    def observe(request: web.Request, status: int, seconds: float) -> None:
        metrics.observe(request.method, route_label(request), status, seconds)
        if status == 507:
            poke_janitor(app)

    return observe


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
