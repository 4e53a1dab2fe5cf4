"""GET / (the landing page) and GET /library/ (every upload by name, newest first).

The landing page is a list of sections, one async function each, rendered in
order: ``(request) -> HTML`` (an empty string leaves the section out).  A
family adds its own with ``add_section(app, render, order)`` from its setup;
the built-in ones are uploads (10), streams (20), sessions (30), cameras (40)
and jobs in progress (50).  Sections ask the families' services for their
facts (nothing here parses another family's files) and look services up with
``app.get`` so a page still renders in an app without that family.  A section
that fails renders a one-line notice instead of failing the whole page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from datetime import datetime
from typing import Awaitable, Callable

from aiohttp import web

from storaged.api.keys import CONFIG, JOBS, LAYOUT, OBJECTS
from storaged.camera import images
from storaged.analyses import work as analyses
from storaged.web.page import esc, human_duration, human_size, human_time, link, page, plural, seg, table

log = logging.getLogger("storaged.web")

Section = Callable[[web.Request], Awaitable[str]]
SECTIONS = web.AppKey("landing_sections", list)
RECENT_UPLOADS = 20
FILES_PAGE = 50
RECENT_SESSIONS = 20
CAMERA_IMAGES = 6
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".mts", ".m3u8"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp"}
routes = web.RouteTableDef()


def add_section(app: web.Application, render: Section, order: int = 100) -> None:
    """Add a section to the landing page (lower ``order`` first)."""
    app.setdefault(SECTIONS, []).append((order, render))


def _zone(request: web.Request):
    try:
        return images.zone(request.app[CONFIG].timezone)
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
    tz = _zone(request)
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


# -- streams -------------------------------------------------------------------------------
_TIMELINE = re.compile(r"^/streams/\{[^}/]+\}/timeline$")


def timeline_url(app: web.Application, stream_id: int) -> str | None:
    """The stream's timeline page when the app has one (the playback family adds it)."""
    for resource in app.router.resources():
        if _TIMELINE.match(resource.canonical):
            return f"/streams/{int(stream_id)}/timeline"
    return None


# Families' app keys are imported where they are used: their api modules import storaged.web (browse,
# openapi), so importing them at the top of this module would be a cycle.
async def streams_section(request: web.Request) -> str:
    from storaged.recording.api import STREAMS
    service = request.app.get(STREAMS)
    if service is None:
        return ""
    streams = await service.list()
    if not streams:
        return ""
    tz = _zone(request)
    parts = ["<h2>Streams</h2>"]
    for status in streams:
        sid = status["id"]
        days = await service.recordings_by_day(sid, tz) if tz else []
        links = [link(f"/streams/{sid}/status", "status")]
        if (timeline := timeline_url(request.app, sid)) is not None:
            links.insert(0, link(timeline, "timeline"))
        if days:
            links.append(link(f"/data/streams/{sid}/segments/", "segments"))
        state = status.get("state") or ("recording" if status.get("recording") else "stopped")
        parts.append(f'<h3>#{sid} {esc(status.get("description") or "")}</h3>'
                     f'<p><code>{esc(_redact(status.get("url")))}</code> — {esc(state)} · {" · ".join(links)}</p>')
        if days:
            parts.append(table(["day", "recorded", "from", "to", "segments", "size"],
                               [[esc(d["day"]), human_duration(d["seconds"]),
                                 esc(human_time(d["start"], tz)[11:]), esc(human_time(d["end"], tz)[11:]),
                                 str(d["segments"]), human_size(d["bytes"])] for d in days], {1, 4, 5}))
        else:
            parts.append('<p class="muted">No recordings.</p>')
    return "".join(parts)


def _redact(url: object) -> str:
    from storaged.camera.motion import redact
    return redact(str(url or ""))


# -- sessions ------------------------------------------------------------------------------
async def sessions_section(request: web.Request) -> str:
    from storaged.sessions.api import SESSIONS
    service = request.app.get(SESSIONS)
    if service is None:
        return ""
    # The catalogue answers JSON arrays ready to send (and a next-page cursor, unused here).
    sessions = json.loads(service.list_sessions()[0])[-RECENT_SESSIONS:][::-1]
    if not sessions:
        return ""

    async def children(session_id: int) -> tuple[list, list]:
        races, events = await asyncio.gather(service.list_races(session_id), service.session_events(session_id))
        return json.loads(races[0]), json.loads(events[0])

    counts = await asyncio.gather(*(children(s["id"]) for s in sessions))
    tz = _zone(request)
    rows = []
    for s, (races, events) in zip(sessions, counts):
        video = s.get("video_url") or ""
        video_cell = link(video, "video") if video.startswith("/download/") else esc(video)
        rows.append([link(f"/sessions/{s['id']}", f"#{s['id']}"), video_cell,
                     link(f"/sessions/{s['id']}/races", plural(len(races), "race")),
                     link(f"/sessions/{s['id']}/events", plural(len(events), "event")),
                     esc(human_time(s.get("created"), tz) if tz else s.get("created"))])
    return "<h2>Sessions</h2>" + table(["session", "video", "races", "events", "created"], rows)


# -- cameras -------------------------------------------------------------------------------
async def cameras_section(request: web.Request) -> str:
    from storaged.camera.api import CAMERA
    cam = request.app.get(CAMERA)
    if cam is None:
        return ""

    def known() -> list[int]:
        numbers = set(cam.specs)
        try:
            numbers |= {int(n) for n in os.listdir(cam.camera_root) if n.isdigit()}
        except FileNotFoundError:
            pass
        return sorted(numbers)

    numbers = await asyncio.to_thread(known)
    if not numbers:
        return ""
    day = datetime.now(cam.tz).strftime("%Y%m%d")
    parts = ["<h2>Cameras</h2>"]
    for n in numbers:
        count, newest = await asyncio.to_thread(images.day_images, cam.camera_dir(n), day, CAMERA_IMAGES)
        folder = f"/data/camera/{n}/{day}/"
        head = f"<h3>Camera {n}</h3><p>{plural(count, 'image')} today"
        if count:
            head += f" · {link(folder, 'all of today')}"
        parts.append(head + f" · {link(f'/data/camera/{n}/', 'every day')}</p>")
        if newest:
            parts.append('<div class="gallery">' + "".join(
                f'<a href="{esc(folder + seg(name))}?view"><img loading="lazy" alt="{esc(name)}" '
                f'src="{esc(folder + seg(name))}"></a>' for name in newest) + "</div>")
    return "".join(parts)


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


BUILTIN: tuple[tuple[int, Section], ...] = (
    (10, uploads_section), (20, streams_section), (30, sessions_section), (40, cameras_section),
    (50, jobs_section))


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


def setup(app: web.Application, deps: object = None) -> None:
    for order, render in BUILTIN:
        add_section(app, render, order)
    app.add_routes(routes)
