"""Playback (storaged.playback.service): /streams/<id>/recordings, playlist.m3u8, segments, play.mp4, timeline."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web

from storaged.api.keys import CONFIG, LAYOUT, OBJECTS, TIMELINE_MARKS, Deps
from storaged.api.sendfile import send_file
from storaged.errors import BadRequest, NotFound
from storaged.playback import service
from storaged.playback.provider import PlaybackProvider
from storaged.playback.timeline import recorded_neighbours, timeline_page
from storaged.recording import index as idx
from storaged.recording.api import STREAMS, timestamp
from storaged.supervise import ffmpeg

log = logging.getLogger("storaged.playback")
routes = web.RouteTableDef()
CHUNK = 64 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"


PROVIDER = PlaybackProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add the playback routes (the recording family must be set up first).  It keeps no data of its own."""
    app.add_routes(routes)
    deps.providers.append(PROVIDER(deps.layout, deps.config))


async def _stream(request: web.Request) -> tuple[int, list[idx.Segment]]:
    streams = request.app[STREAMS]
    record = await streams.record(request.match_info["id"])
    sid = record["id"]
    segments = await asyncio.to_thread(streams.index(sid).segments)
    return sid, segments


def _range(request: web.Request, required: bool = False) -> tuple[float | None, float | None]:
    q = request.query
    start = timestamp(q["start"], "start") if q.get("start") not in (None, "") else None
    end = timestamp(q["end"], "end") if q.get("end") not in (None, "") else None
    if required and start is None:
        raise BadRequest("start is required (POSIX timestamp)")
    if start is not None and end is not None and end <= start:
        raise BadRequest("end must be later than start")
    return start, end


@routes.get("/streams/{id}/recordings")
async def recordings(request: web.Request) -> web.Response:
    """Recorded spans and gaps of the stream within start..end (POSIX seconds, both optional)."""
    start, end = _range(request)
    _, segments = await _stream(request)
    return web.json_response(service.recordings(segments, start, end))


@routes.get("/streams/{id}/playlist.m3u8")
async def playlist(request: web.Request) -> web.Response:
    """HLS playlist: VOD over start..end (whole segments, program date times, discontinuities), else live."""
    start, end = _range(request)
    _, segments = await _stream(request)
    live = start is None and end is None
    text = service.playlist(segments, start, end, live)
    return web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                        headers={"Cache-Control": "no-cache" if live else "max-age=5"})


@routes.get("/streams/{id}/segments/{run}/{name}")
async def segment(request: web.Request) -> web.StreamResponse:
    """One finished segment (MPEG-TS), with Range and a long-lived cache: its bytes never change."""
    streams = request.app[STREAMS]
    record = await streams.record(request.match_info["id"])
    run, name = request.match_info["run"], request.match_info["name"]
    m = idx.RUN_DIR_RE.match(run)
    if m is None or not idx.NAME_RE.match(name) or not name.startswith(run + "-"):
        raise NotFound("no such segment")
    path = streams.stream_dir(record["id"]) / "segments" / run / name
    try:
        return await send_file(request, path, content_type="video/mp2t", headers={"Cache-Control": IMMUTABLE})
    except NotFound:
        raise NotFound("no such segment") from None


async def _pipe(request: web.Request, argv: list[str], first_frame: float | None,
                cleanup: Path | None = None) -> web.StreamResponse:
    """Stream ffmpeg's stdout as the response; ffmpeg is stopped however the response ends."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    stderr: collections.deque = collections.deque(maxlen=20)
    drain = asyncio.get_running_loop().create_task(ffmpeg.drain_lines(proc.stderr, stderr))
    resp = web.StreamResponse(headers={"Content-Type": "video/mp4", "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff"})
    if first_frame is not None:
        resp.headers["X-First-Frame-Time"] = f"{first_frame:.3f}"
    try:
        first = await proc.stdout.read(CHUNK)
        if not first:
            await proc.wait()
            await drain
            log.error("playback ffmpeg produced nothing: %s", " | ".join(stderr))
            raise web.HTTPInternalServerError(text="ffmpeg could not play this range")
        await resp.prepare(request)
        chunk = first
        while chunk:
            await resp.write(chunk)  # waits while the client is slow: the pipe fills and ffmpeg waits too
            chunk = await proc.stdout.read(CHUNK)
        await resp.write_eof()
        return resp
    except (ConnectionResetError, asyncio.CancelledError):
        log.info("playback client went away; stopping ffmpeg pid %d", proc.pid)
        raise
    finally:
        # Our end of its stdout closes first: an ffmpeg blocked writing to it gets EPIPE at once.
        pipe = proc._transport.get_pipe_transport(1) if proc.returncode is None else None  # noqa: SLF001
        if pipe is not None:
            pipe.close()
        code = await asyncio.shield(ffmpeg.stop_process(proc, timeout=2.0))
        log.info("playback ffmpeg pid %d ended (%s)", proc.pid, code)
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        if cleanup is not None:
            await asyncio.to_thread(_unlink, cleanup)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@routes.get("/streams/{id}/play.mp4")
async def play_stream(request: web.Request) -> web.StreamResponse:
    """Fragmented MP4 of start..end remuxed on the fly (from the keyframe at or before start; gaps skipped)."""
    start, end = _range(request, required=True)
    sid, segments = await _stream(request)
    if end is None:
        end = max((s.end for s in segments), default=start)
    index = request.app[STREAMS].index(sid)
    planned = await asyncio.to_thread(service.progressive_plan, index, segments, start, end)
    if planned is None:
        raise NotFound("nothing recorded in this range")
    script, first_frame, copy = planned
    concat = request.app[LAYOUT].tmp / f"play-{uuid.uuid4().hex}.ffconcat"
    await asyncio.to_thread(concat.write_text, script)
    return await _pipe(request, service.fragmented_mp4_argv(ffmpeg.base_args(), concat, copy), first_frame, concat)


@routes.get("/play/{file_id}")
async def play_file(request: web.Request) -> web.StreamResponse:
    """Fragmented MP4 of an uploaded video from start to end (seconds into it), remuxed on the fly."""
    q = request.query
    start = _seconds(q.get("start"), "start") or 0.0
    end = _seconds(q.get("end"), "end")
    if end is not None and end <= start:
        raise BadRequest("end must be later than start")
    path, _meta = await request.app[OBJECTS].open_path(request.match_info["file_id"])
    return await _pipe(request, service.file_argv(ffmpeg.base_args(), path, start, end), None)


def _seconds(raw: str | None, name: str) -> float | None:
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be seconds into the video (e.g. 12.5)") from None
    if not 0 <= value < 1e9:
        raise BadRequest(f"{name} must be seconds into the video (e.g. 12.5)")
    return value


@routes.get("/streams/{id}/timeline")
async def timeline(request: web.Request) -> web.Response:
    """A day of the stream's recording: spans and gaps on a scale; click to play (HTML)."""
    streams = request.app[STREAMS]
    record = await streams.record(request.match_info["id"])
    tz = ZoneInfo(request.app[CONFIG].timezone)
    raw_day = request.query.get("day")
    try:
        day = datetime.strptime(raw_day, "%Y-%m-%d").date() if raw_day else datetime.now(tz).date()
    except ValueError:
        raise BadRequest("day must be a date, e.g. 2025-01-31") from None
    begin = datetime(day.year, day.month, day.day, tzinfo=tz)
    a, b = begin.timestamp(), (begin + timedelta(days=1)).timestamp()
    segments = await asyncio.to_thread(streams.index(record["id"]).segments)
    rec = service.recordings(segments, a, b)
    marks = [m for source in request.app[TIMELINE_MARKS] for m in await source(a, b)]
    neighbours = recorded_neighbours([seg.start for seg in segments], a, b, tz)
    html = timeline_page(record, day, a, b, rec, tz, sorted(marks), neighbours)
    return web.Response(text=html, content_type="text/html")

