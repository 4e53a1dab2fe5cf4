"""GET /healthz: liveness for systemd, load balancers and people."""

from __future__ import annotations

import asyncio
import shutil

from aiohttp import web

from storaged import __version__
from storaged.api.keys import LAYOUT

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: version, data dir, free bytes."""
    root = request.app[LAYOUT].root
    usage = await asyncio.to_thread(shutil.disk_usage, root)
    return web.json_response({
        "ok": True,
        "version": __version__,
        "data_dir": str(root),
        "free_bytes": usage.free,
    })
