"""The recording family's section of the landing page: each stream, its state and its recorded days.

Registered by the family's setup in ``Deps.landing_sections`` (storaged.web.landing renders them).
"""

from __future__ import annotations

import re

from aiohttp import web

from storaged.recording.supervisor import StreamService
from storaged.supervise.ffmpeg import redact
from storaged.web.landing import Section, local_zone
from storaged.web.page import esc, human_duration, human_size, human_time, link, table

ORDER = 20
_TIMELINE = re.compile(r"^/streams/\{[^}/]+\}/timeline$")


def timeline_url(app: web.Application, stream_id: int) -> str | None:
    """The stream's timeline page when the app has one (the playback family adds it)."""
    for resource in app.router.resources():
        if _TIMELINE.match(resource.canonical):
            return f"/streams/{int(stream_id)}/timeline"
    return None


def streams_section(service: StreamService) -> Section:
    async def streams(request: web.Request) -> str:
        listed = await service.list()
        if not listed:
            return ""
        tz = local_zone(request)
        parts = ["<h2>Streams</h2>"]
        for status in listed:
            sid = status["id"]
            days = await service.recordings_by_day(sid, tz) if tz else []
            links = [link(f"/streams/{sid}/status", "status")]
            if (timeline := timeline_url(request.app, sid)) is not None:
                links.insert(0, link(timeline, "timeline"))
            if days:
                links.append(link(f"/data/streams/{sid}/segments/", "segments"))
            state = status.get("state") or ("recording" if status.get("recording") else "stopped")
            parts.append(f'<h3>#{sid} {esc(status.get("description") or "")}</h3>'
                         f'<p><code>{esc(redact(str(status.get("url") or "")))}</code> — {esc(state)} · '
                         f'{" · ".join(links)}</p>')
            if days:
                parts.append(table(["day", "recorded", "from", "to", "segments", "size"],
                                   [[esc(d["day"]), human_duration(d["seconds"]),
                                     esc(human_time(d["start"], tz)[11:]), esc(human_time(d["end"], tz)[11:]),
                                     str(d["segments"]), human_size(d["bytes"])] for d in days], {1, 4, 5}))
            else:
                parts.append('<p class="muted">No recordings.</p>')
        return "".join(parts)
    return streams
