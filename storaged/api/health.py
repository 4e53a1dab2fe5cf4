"""GET /healthz: liveness and readiness for systemd, load balancers and people.

``ok`` is true only while the daemon can keep its promises: the data root
accepts a new file (a probe file created and removed in ``<data>/tmp``; a
read-only remount, a permission change or an I/O error fails it) and its
filesystem has at least ``health_min_free`` bytes free.  Otherwise the answer
is 503 with ``ok: false`` and ``problems`` saying why.  The probe and the
free-space reading run in a thread and are cached for a second, so frequent
probes cost one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
import time

from aiohttp import web

from storaged import __version__
from storaged.api.keys import CONFIG, LAYOUT, Deps
from storaged.store.layout import Layout

routes = web.RouteTableDef()


CHECK_TTL = 1.0  # seconds; probes every few ms must not each cost a thread hop
_cache: dict[tuple[str, int], tuple[float, int, list[str]]] = {}  # (root, floor) -> (when, free, problems)


def check_data_root(layout: Layout, min_free: int) -> tuple[int, list[str]]:
    """(free bytes, problems).  Blocking."""
    problems = []
    probe = layout.tmp / f".healthz-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        cause = errno.errorcode.get(exc.errno or 0, "error")
        problems.append(f"the data root is not writable: {exc.strerror} ({cause})")
    try:
        free = shutil.disk_usage(layout.root).free
    except OSError as exc:
        free = 0
        problems.append(f"the data root cannot be read: {exc.strerror}")
    else:
        if free < min_free:
            problems.append(f"only {free} bytes free on the data filesystem, below health_min_free ({min_free})")
    return free, problems


def setup(app: web.Application, deps: Deps) -> None:
    app.add_routes(routes)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: version, data dir, free bytes; 503 when the data root cannot take writes."""
    layout = request.app[LAYOUT]
    root = str(layout.root)
    floor = request.app[CONFIG].health_min_free
    now = time.monotonic()
    cached = _cache.get((root, floor))
    if cached is None or now - cached[0] > CHECK_TTL:
        free, problems = await asyncio.to_thread(check_data_root, layout, floor)
        cached = _cache[(root, floor)] = (now, free, problems)
    _, free, problems = cached
    body = {"ok": not problems, "version": __version__, "data_dir": root, "free_bytes": free}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=503 if problems else 200)
