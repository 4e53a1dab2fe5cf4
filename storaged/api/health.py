"""GET /healthz: liveness for systemd, load balancers and people."""

from __future__ import annotations

import asyncio
import shutil
import time

from aiohttp import web

from storaged import __version__
from storaged.api.keys import LAYOUT

routes = web.RouteTableDef()


FREE_SPACE_TTL = 1.0  # seconds; probes every few ms must not each cost a thread hop
_free_cache: dict[str, tuple[float, int]] = {}


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: version, data dir, free bytes."""
    root = str(request.app[LAYOUT].root)
    now = time.monotonic()
    cached = _free_cache.get(root)
    if cached is None or now - cached[0] > FREE_SPACE_TTL:
        usage = await asyncio.to_thread(shutil.disk_usage, root)
        cached = _free_cache[root] = (now, usage.free)
    return web.json_response({
        "ok": True,
        "version": __version__,
        "data_dir": root,
        "free_bytes": cached[1],
    })
