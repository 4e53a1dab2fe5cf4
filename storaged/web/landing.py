"""GET / (the landing page) and GET /library/ (every upload by name, newest first).

The landing page is a list of sections, one async function each, rendered in
order: ``(request) -> HTML`` (an empty string leaves the section out).  The
ones here are uploads (10) and jobs in progress (50); a family adds its own
from its setup to ``Deps.landing_sections`` (streams 20, sessions 30,
cameras 40, the storage tier 60), a render bound to its own service, so this
module knows no family's service or app key and a page still renders in an
app without that family.  A section that fails renders a one-line notice
instead of failing the whole page.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable
from zoneinfo import ZoneInfo

from aiohttp import web

from storaged.api.keys import CONFIG, JOBS, LAYOUT, OBJECTS, Deps
from storaged.config import zone
from storaged.analyses import work as analyses
from storaged.web.page import esc, human_duration, human_size, human_time, link, page, seg, table

log = logging.getLogger("storaged.web")

Section = Callable[[web.Request], Awaitable[str]]
SECTIONS = web.AppKey("landing_sections", list)
RECENT_UPLOADS = 20
FILES_PAGE = 50
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".mts", ".m3u8"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp"}
routes = web.RouteTableDef()


def local_zone(request: web.Request) -> ZoneInfo | None:
    """The box's time zone (the ``timezone`` setting) for showing times; None when it is not known."""
    try:
        return zone(request.app[CONFIG].timezone)
    except ValueError:
        return None


# -- files ---------------------------------------------------------------------------------
def object_url(file_id: str) -> str:
    return f"/data/{file_id[:2]}/{file_id[2:]}/"


def player_url(meta: dict) -> str | None:
    """The player page of a stored file, for video and images; None for other files."""
    stored = meta.get("stored_name") or ""
    ext = os.path.splitext(stored)[1].lower()
    if ext in VIDEO_EXTS or str(meta.get("content_type", "")).startswith("video/"):
        return object_url(meta["file_id"]) + seg(stored) + "?play"
    if ext in IMAGE_EXTS:
        return object_url(meta["file_id"]) + seg(stored) + "?view"
    return None


def download_url(meta: dict) -> str:
    return f"/download/{meta['file_id']}/{seg(meta.get('name') or meta.get('stored_name') or 'file')}?dl"


async def _file_rows(request: web.Request, metas: list[dict]) -> list[list[str]]:
    layout = request.app[LAYOUT]
    facts = await asyncio.gather(*(asyncio.to_thread(analyses.file_facts, layout.object_dir(m["file_id"]))
                                   for m in metas))
    tz = local_zone(request)
    rows = []
    for meta, fact in zip(metas, facts):
        thumb = (f'<img class="thumb" loading="lazy" alt="" src="{esc(fact["thumbnail"])}">'
                 if fact["thumbnail"] else "")
        actions = [link(url, "play")] if (url := player_url(meta)) else []
        actions.append(link(download_url(meta), "download"))
        name = meta.get("name") or meta.get("stored_name") or meta["file_id"]
        rows.append([
            thumb,
            link(object_url(meta["file_id"]), name) + f'<br><span class="muted">{esc(meta["file_id"][:12])}…</span>',
            human_size(meta.get("size")),
            esc(human_time(meta.get("created"), tz) if tz else meta.get("created")),
            human_duration(fact["duration"]),
            " · ".join(actions),
        ])
    return rows


FILE_HEADERS = ["", "name", "size", "uploaded", "duration", ""]


async def uploads_section(request: web.Request) -> str:
    listing = await request.app[OBJECTS].recent(RECENT_UPLOADS)
    if not listing["total"]:
        return ('<h2>Recent uploads</h2><p class="muted">No files yet: '
                '<code>curl -T clip.mp4 http://HOST/upload?name=clip.mp4</code></p>')
    more = (f'<p>{link("/library/", "all " + str(listing["total"]) + " files")}</p>'
            if listing["total"] > RECENT_UPLOADS else "")
    return ("<h2>Recent uploads</h2>" + table(FILE_HEADERS, await _file_rows(request, listing["files"]), {2, 4})
            + more)


@routes.get("/library/")
async def files_page(request: web.Request) -> web.Response:
    """Every stored file by name, newest first (an HTML page, `page` from 1)."""
    raw = request.query.get("page", "1")
    number = int(raw) if raw.isdigit() and 0 < int(raw) < 10**9 else 1
    listing = await request.app[OBJECTS].recent(FILES_PAGE, (number - 1) * FILES_PAGE)
    pages = max(1, -(-listing["total"] // FILES_PAGE))
    nav = []
    if number > 1:
        nav.append(link(f"/library/?page={number - 1}", "← newer"))
    if number < pages:
        nav.append(link(f"/library/?page={number + 1}", "older →"))
    body = (f'<p>{listing["total"]} files, page {min(number, pages)} of {pages}. '
            f'The same files by id: {link("/data/", "the data tree")}.</p>'
            + table(FILE_HEADERS, await _file_rows(request, listing["files"]), {2, 4})
            + f'<p>{" · ".join(nav)}</p>')
    return web.Response(text=page("Library", body), content_type="text/html")


@routes.get("/library")
async def files_redirect(request: web.Request) -> web.StreamResponse:
    """Redirect to /library/."""
    raise web.HTTPMovedPermanently(location="/library/")


# -- jobs ----------------------------------------------------------------------------------
async def jobs_section(request: web.Request) -> str:
    jobs = await request.app[JOBS].in_progress()
    root = request.app[LAYOUT].root
    file_ids = [s.config.get("file_id") if isinstance(s.config.get("file_id"), str) else None for _, s in jobs]
    metas = await asyncio.gather(*(request.app[OBJECTS].meta(f) for f in file_ids if f), return_exceptions=True)
    names = {f: m.get("name") for f, m in zip([f for f in file_ids if f], metas) if isinstance(m, dict)}
    rows = []
    for (job_dir, state), file_id in zip(jobs, file_ids):
        config = state.config
        what = config.get("analysis") or config.get("kind", "job").rsplit(":", 1)[-1]
        subject = link(object_url(file_id), names.get(file_id) or file_id[:12] + "…") if file_id else ""
        progress = state.progress
        bar = (f'<progress max="1" value="{progress:.3f}">{progress:.0%}</progress> {progress:.0%}'
               if isinstance(progress, (int, float)) else '<progress max="1"></progress>')
        rel = os.path.relpath(job_dir, root)
        rows.append([esc(what), subject, esc(state.status), bar,
                     link("/data/" + "/".join(seg(p) for p in rel.split(os.sep)) + "/", "files")])
    if not rows:
        return '<h2>Jobs in progress</h2><p class="muted">None.</p>'
    return "<h2>Jobs in progress</h2>" + table(["job", "on", "status", "progress", ""], rows)


BUILTIN: tuple[tuple[int, Section], ...] = ((10, uploads_section), (50, jobs_section))


@routes.get("/")
async def landing(request: web.Request) -> web.Response:
    """The landing page: recent uploads, streams, sessions, cameras and jobs in progress (HTML)."""
    sections = sorted(request.app.get(SECTIONS, []), key=lambda s: s[0])
    rendered = await asyncio.gather(*(render(request) for _, render in sections), return_exceptions=True)
    parts = []
    for (_, render), html in zip(sections, rendered):
        if isinstance(html, BaseException):
            log.error("landing page section %s failed", render.__name__, exc_info=html)
            parts.append(f'<p class="muted">({esc(render.__name__)} could not be shown: {esc(html)})</p>')
        elif html:
            parts.append(html)
    return web.Response(text=page("storaged", "".join(parts)), content_type="text/html")


def setup(app: web.Application, deps: Deps) -> None:
    """The landing page's sections: the ones here and those the families registered in ``deps``."""
    app[SECTIONS] = [*BUILTIN, *deps.landing_sections]
    app.add_routes(routes)
