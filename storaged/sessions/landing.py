"""The sessions family's section of the landing page: the recent sessions with their races and events.

Registered by the family's setup in ``Deps.landing_sections`` (storaged.web.landing renders them).
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from storaged.sessions.service import SessionsService
from storaged.web.landing import Section, local_zone
from storaged.web.page import esc, human_time, link, plural, table

ORDER = 30
RECENT_SESSIONS = 20


def sessions_section(service: SessionsService) -> Section:
    async def sessions(request: web.Request) -> str:
        # The catalogue answers JSON arrays ready to send (and a next-page cursor, unused here).
        recent = json.loads(service.list_sessions()[0])[-RECENT_SESSIONS:][::-1]
        if not recent:
            return ""

        async def children(session_id: int) -> tuple[list, list]:
            races, events = await asyncio.gather(service.list_races(session_id),
                                                 service.session_events(session_id))
            return json.loads(races[0]), json.loads(events[0])

        counts = await asyncio.gather(*(children(s["id"]) for s in recent))
        tz = local_zone(request)
        rows = []
        for s, (races, events) in zip(recent, counts):
            video = s.get("video_url") or ""
            video_cell = link(video, "video") if video.startswith("/download/") else esc(video)
            rows.append([link(f"/sessions/{s['id']}", f"#{s['id']}"), video_cell,
                         link(f"/sessions/{s['id']}/races", plural(len(races), "race")),
                         link(f"/sessions/{s['id']}/events", plural(len(events), "event")),
                         esc(human_time(s.get("created"), tz) if tz else s.get("created"))])
        return "<h2>Sessions</h2>" + table(["session", "video", "races", "events", "created"], rows)
    return sessions
