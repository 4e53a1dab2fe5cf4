"""create_app(config): the one place services are built and wired into the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from aiohttp import web

from storaged.analyses import api as analyses
from storaged.api import expect, health
from storaged.api.connections import Collector, ConnectionGuard
from storaged.camera import api as camera
from storaged.files import api as files
from storaged.ops import api as ops
from storaged.playback import api as playback
from storaged.recording import api as streams
from storaged.sessions import api as sessions
from storaged.videostreams import api as videostreams
from storaged.web import browse, landing, openapi
from storaged.api.keys import AFTER_PUT, AUTH, BEFORE_DELETE, CONNECTIONS, CONFIG, INFLIGHT, JOBS, LAYOUT, OBJECTS, \
    TOKEN_GATE
from storaged.api.middleware import AuthThrottle, InFlight, errors_middleware, token_gate, token_middleware
from storaged.api.keys import ENSURE_LOCAL, READ_THROUGH  # hooks the storage tier fills
from storaged.config import Config
from storaged.jobs.runner import JobRunner
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, sweep_period
from storaged.store.smallobjects import SmallObjects
from storaged.tier import api as tier_api
from storaged.uploads import api as uploads

log = logging.getLogger("storaged")


def create_app(config: Config) -> web.Application:
    inflight = InFlight()
    middlewares = [inflight.middleware, errors_middleware]
    auth = AuthThrottle(config.auth_max_failures, config.auth_failure_window)
    gate = token_gate(config.token, auth) if config.token else None
    if gate is not None:
        middlewares.append(token_middleware(gate))
    # Uploads stream through request.content and never hit client_max_size;
    # the limit here only bounds JSON/form bodies read whole.
    app = web.Application(middlewares=middlewares, client_max_size=16 * 1024 * 1024)
    layout = Layout(config.data_dir)
    app[CONFIG] = config
    app[INFLIGHT] = inflight
    app[AUTH] = auth
    app[TOKEN_GATE] = gate
    guard = app[CONNECTIONS] = ConnectionGuard(config)  # `storaged serve` admits connections through it
    app[LAYOUT] = layout
    app[OBJECTS] = ObjectStore(layout, max_size=config.max_upload_size, chunk_size=config.upload_chunk_size,
                               small=SmallObjects(config.small_file_cache, config.small_file_max))
    app[BEFORE_DELETE] = []
    app[AFTER_PUT] = []
    app[READ_THROUGH] = []
    app[ENSURE_LOCAL] = []
    app[JOBS] = JobRunner(layout, concurrency=config.job_concurrency, stop_timeout=config.job_stop_timeout,
                          use_zygote=config.job_zygote)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_jobs_ctx)
    app.add_routes(health.routes)
    app.add_routes(files.routes)
    app.add_routes(browse.routes)
    for family in (analyses, sessions, streams, playback, videostreams, camera, uploads):
        family.setup(app)
    ops.setup(app)
    tier_api.setup(app)
    app[ops.METRICS].registry.register(Collector(guard, auth, inflight))
    landing.setup(app)
    openapi.setup(app)  # last: it describes the routes present
    expect.refuse_unroutable(app)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    layout = app[LAYOUT]
    await asyncio.to_thread(layout.ensure)
    swept = await asyncio.to_thread(app[OBJECTS].sweep_temps, app[CONFIG].temp_max_age)
    if swept:
        log.info("swept %d stale temp entries from %s", len(swept), layout.tmp)
    sweeper = asyncio.create_task(_sweep_temps_forever(app), name="tmp-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def _sweep_temps_forever(app: web.Application) -> None:
    """Temps a crash left behind go while the daemon runs too, not only at its next start."""
    max_age = app[CONFIG].temp_max_age
    while True:
        await asyncio.sleep(sweep_period(max_age))
        try:
            swept = await asyncio.to_thread(app[OBJECTS].sweep_temps, max_age)
        except OSError as exc:  # a read-only or failing disk: try again next time
            log.warning("sweeping %s failed: %s", app[LAYOUT].tmp, exc)
            continue
        if swept:
            log.info("swept %d stale temp entries from %s", len(swept), app[LAYOUT].tmp)


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    runner = app[JOBS]
    await runner.start()
    yield
    await runner.close()
