"""create_app(config): the one place services are built and wired into the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from aiohttp import web

from storaged.api import expect, health
from storaged.api.connections import Collector, ConnectionGuard
from storaged.api.keys import AFTER_PUT, AUTH, BEFORE_DELETE, CONNECTIONS, CONFIG, ENSURE_LOCAL, INFLIGHT, JOBS, \
    LAYOUT, OBJECTS, READ_THROUGH, TIMELINE_MARKS, TOKEN_GATE, Deps
from storaged.api.middleware import AuthThrottle, Front, InFlight, token_gate
from storaged.families import FAMILIES
from storaged.ops import api as ops
from storaged.tier import api as tier_api
from storaged.web import browse, landing, openapi
from storaged.config import Config
from storaged.jobs.runner import JobRunner
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, sweep_period
from storaged.store.smallobjects import SmallObjects

log = logging.getLogger("storaged")


def create_app(config: Config) -> web.Application:
    inflight = InFlight()
    auth = AuthThrottle(config.auth_max_failures, config.auth_failure_window)
    gate = token_gate(config.token, auth) if config.token else None
    # One middleware for every request (storaged.api.middleware); families and ops register their
    # parts of it through deps.front.
    front = Front(inflight, gate)
    # Uploads stream through request.content and never hit client_max_size;
    # the limit here only bounds JSON/form bodies read whole.
    app = web.Application(middlewares=[front.middleware], client_max_size=16 * 1024 * 1024)
    layout = Layout(config.data_dir)
    app[CONFIG] = config
    app[INFLIGHT] = inflight
    app[AUTH] = auth
    app[TOKEN_GATE] = gate
    guard = app[CONNECTIONS] = ConnectionGuard(config)  # `storaged serve` admits connections through it
    app[LAYOUT] = layout
    app[OBJECTS] = ObjectStore(layout, max_size=config.max_upload_size, chunk_size=config.upload_chunk_size,
                               small=SmallObjects(config.small_file_cache, config.small_file_max))
    app[JOBS] = JobRunner(layout, concurrency=config.job_concurrency, stop_timeout=config.job_stop_timeout,
                          use_zygote=config.job_zygote)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_jobs_ctx)
    deps = Deps(config=config, layout=layout, objects=app[OBJECTS], jobs=app[JOBS], inflight=inflight,
                front=front)
    app[BEFORE_DELETE] = deps.before_delete
    app[AFTER_PUT] = deps.after_put
    app[READ_THROUGH] = deps.read_through
    app[ENSURE_LOCAL] = deps.ensure_local
    app[TIMELINE_MARKS] = deps.timeline_marks
    # The data families first (each registers its provider in deps), then the storage tier (its eviction
    # is a provider too), then operations, which ask them all, then the pages; openapi last: it
    # describes the routes present.
    for part in (health, *FAMILIES, tier_api, ops, browse, landing, openapi):
        part.setup(app, deps)
    app[ops.METRICS].registry.register(Collector(guard, auth, inflight))
    expect.refuse_unroutable(app)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    layout = app[LAYOUT]
    await asyncio.to_thread(layout.ensure)
    sweeper = asyncio.create_task(_sweep_temps_forever(app), name="tmp-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def _sweep_temps_forever(app: web.Application) -> None:
    """Temps a crash left behind go at start-up and while the daemon runs, not only at its next start.

    The first sweep runs beside the first requests rather than before them: it walks the whole tree
    (a million record names at scale), and it only takes temps older than ``temp_max_age``, which no
    write in progress leaves."""
    max_age = app[CONFIG].temp_max_age
    while True:
        try:
            swept = await asyncio.to_thread(app[OBJECTS].sweep_temps, max_age)
        except OSError as exc:  # a read-only or failing disk: try again next time
            log.warning("sweeping %s failed: %s", app[LAYOUT].tmp, exc)
        else:
            if swept:
                log.info("swept %d stale temp entries from %s", len(swept), app[LAYOUT].tmp)
        await asyncio.sleep(sweep_period(max_age))


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    runner = app[JOBS]
    await runner.start()
    yield
    await runner.close()
