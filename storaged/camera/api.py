"""Camera storage (specs/camera-storage.md): /motion, /convert, /file, /shared.

Handlers validate and call the services in storaged.camera.  Cameras are
numbers; a camera is known when it is configured (setting ``cameras``) or
when its folder ``<data>/camera/<n>/`` exists (images another program
dropped there count the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator
from zoneinfo import ZoneInfo

from aiohttp import web

from storaged.web.browse import serve_tree
from storaged.api.bodies import json_object
from storaged.api.keys import Deps
from storaged.camera import convert, images, landing, usage
from storaged.camera.motion import CameraSpec, MotionService, parse_cameras
from storaged.camera.provider import CameraProvider
from storaged.config import ConfigError, zone
from storaged.errors import BadRequest, NotFound, missing_or_mistyped
from storaged.schema import object_schema

log = logging.getLogger("storaged.camera")
routes = web.RouteTableDef()


@dataclass
class CameraStorage:
    tz: ZoneInfo
    specs: dict[int, CameraSpec]
    camera_root: Path
    shared_root: Path
    frame_limit: int
    motion: MotionService
    processes: convert.ProcessService | None = None

    def camera_dir(self, n: int) -> Path:
        return self.camera_root / str(n)


CAMERA = web.AppKey("camera_storage", CameraStorage)


PROVIDER = CameraProvider
MARKS_PER_CAMERA = 240  # a day's scale holds no more distinguishable marks


async def motion_marks(cam: CameraStorage, start: float, end: float) -> list[tuple[float, str, str]]:
    """Motion images saved in [start, end] (epoch seconds), evenly thinned per camera, for a timeline."""
    lo, hi = images.range_bounds(datetime.fromtimestamp(start, cam.tz), datetime.fromtimestamp(end, cam.tz))

    def collect() -> list[tuple[float, str, str]]:
        marks = []
        try:
            cameras = sorted(int(n) for n in os.listdir(cam.camera_root) if n.isdigit())
        except FileNotFoundError:
            return marks
        for n in cameras:
            for path in images.spaced(cam.camera_dir(n), lo, hi, MARKS_PER_CAMERA):
                when = images.capture_time(path)
                if when is not None:
                    when = when.replace(tzinfo=cam.tz)
                    rel = path.relative_to(cam.camera_root.parent).as_posix()
                    marks.append((when.timestamp(), f"camera {n} motion", f"/data/{rel}"))
        return marks

    return await asyncio.to_thread(collect)



def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes and services to the app; register its provider."""
    config = deps.config
    try:
        tz = zone(config.timezone)
        specs = parse_cameras(config.cameras, config.camera_threshold, config.camera_max_fps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.camera_frame_limit < 1:
        raise ConfigError("camera_frame_limit must be at least 1")
    root = deps.layout.root
    camera_root = root / "camera"
    motion = MotionService(specs, camera_root, tz, backoff_max=config.camera_backoff_max)
    app[CAMERA] = CameraStorage(
        tz=tz, specs=specs, camera_root=camera_root, shared_root=root / "shared",
        frame_limit=config.camera_frame_limit, motion=motion,
        processes=convert.ProcessService(deps.jobs, deps.layout, expiry=config.camera_output_expiry))
    provider = PROVIDER(deps.layout, config)
    provider.motion = motion
    deps.providers.append(provider)
    deps.timeline_marks.append(lambda start, end: motion_marks(app[CAMERA], start, end))
    deps.landing_sections.append((landing.ORDER, landing.cameras_section(app[CAMERA])))
    app.cleanup_ctx.append(lambda app: _camera_ctx(app, config))
    app.add_routes(routes)


async def _camera_ctx(app: web.Application, config) -> AsyncIterator[None]:
    cam = app[CAMERA]
    for d in (cam.camera_root, cam.processes.root, cam.processes.captures):
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
    await cam.motion.start()
    sweeper = asyncio.create_task(_sweep_loop(cam.processes, config.camera_output_expiry), name="camera-expiry")
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await cam.motion.close()


async def _sweep_loop(processes: convert.ProcessService, expiry: float) -> None:
    interval = min(60.0, max(0.2, expiry / 10))
    while True:
        try:
            await processes.sweep()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("camera output expiry sweep failed; trying again later")
        await asyncio.sleep(interval)


# -- input -----------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


async def _camera(request: web.Request, body: dict) -> int:
    n = body.get("camera")
    if not _is_int(n):
        raise missing_or_mistyped("camera", n, "a camera number (an integer)")
    if not 0 < n <= images.MAX_CAMERA:
        raise BadRequest("camera must be a positive camera number")
    cam = request.app[CAMERA]
    if n not in cam.specs and not await asyncio.to_thread(cam.camera_dir(n).is_dir):
        raise NotFound(f"camera {n} not found")
    return n


# What the checks below accept, for the OpenAPI document (storaged.web.openapi reads these).
MAX_FPS = 240
CAMERA_NUMBER = {"type": "integer", "minimum": 1, "maximum": images.MAX_CAMERA}
FPS = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_FPS}
SKIP = {"type": "integer", "minimum": 0}
FRAMES = {"type": "integer", "minimum": 1, "description": "at most the setting camera_frame_limit"}
DAYS = {"type": "number", "minimum": 0}
WHEN = {"type": "string", "description": "YYYYMMDD-HHMMSS, an ISO date or date-time (box zone unless it has an offset)"}
SAVE = {"type": "boolean"}
PROCESS_ID = {"type": "string", "minLength": 1,
              "description": "<8 letters/digits>-<YYYYMMDD-HHMMSS>, as answered by createVideo/createZip"}
_RANGE = {"camera": CAMERA_NUMBER, "start": WHEN, "end": WHEN}
BODIES = {
    "createVideo": object_schema({**_RANGE, "fps": FPS, "skip": SKIP, "save": SAVE},
                                 ("camera", "fps", "start", "end"), closed=False),
    "createZip": object_schema({**_RANGE, "skip": SKIP, "save": SAVE}, ("camera", "start", "end"), closed=False),
    "listFramesVideo": object_schema({**_RANGE, "frames": FRAMES}, ("camera", "start", "end", "frames"),
                                     closed=False),
    "process": object_schema({"id": PROCESS_ID}, ("id",), closed=False),
    "camera": object_schema({"camera": CAMERA_NUMBER}, ("camera",), closed=False),
    "pathClean": object_schema({"camera": CAMERA_NUMBER, "days": DAYS}, ("camera", "days"), closed=False),
}


def _int_field(body: dict, name: str, default: int | None = None, minimum: int = 0) -> int:
    v = body.get(name, default)
    if not _is_int(v):
        raise missing_or_mistyped(name, v, "an integer")
    if v < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return v


def _bool_field(body: dict, name: str, default: bool) -> bool:
    v = body.get(name, default)
    if not isinstance(v, bool):
        raise BadRequest(f"{name} must be true or false")
    return v


def _range(request: web.Request, body: dict) -> tuple[datetime, datetime]:
    tz = request.app[CAMERA].tz
    start = images.parse_when(body.get("start"), tz, "start")
    end = images.parse_when(body.get("end"), tz, "end")
    if start > end:
        raise BadRequest("start is after end")
    return start, end


# -- /motion -----------------------------------------------------------------------

@routes.get("/motion/status")
async def motion_status(request: web.Request) -> web.Response:
    """Per camera: running, source, images saved, last motion, restarts, last error."""
    return web.json_response(request.app[CAMERA].motion.status())


# -- /convert ----------------------------------------------------------------------

async def _create(request: web.Request, kind: str) -> web.Response:
    body = await json_object(request)
    cam = request.app[CAMERA]
    n = await _camera(request, body)
    start, end = _range(request, body)
    skip = _int_field(body, "skip", 0, minimum=SKIP["minimum"])
    save = _bool_field(body, "save", False)
    args: dict[str, Any] = {}
    if kind == "mp4":
        fps = body.get("fps")
        if not _is_number(fps):
            raise missing_or_mistyped("fps", fps, "frames per second of the video (a number)")
        if not 0 < fps <= MAX_FPS:
            raise BadRequest(f"fps must be more than 0 and at most {MAX_FPS}")
        args["fps"] = float(fps)
    lo, hi = images.range_bounds(start, end)
    total = await asyncio.to_thread(images.count_range, cam.camera_dir(n), lo, hi)
    selected = images.selected_count(total, skip)
    if selected == 0:
        raise BadRequest("no images between start and end")
    limit_met = selected > cam.frame_limit
    requested = datetime.now(cam.tz).replace(tzinfo=None)
    pid = convert.new_process_id(requested)
    start_key, end_key = images.key_of(start), images.key_of(end)
    name = convert.output_name(n, start_key, end_key, pid, kind)
    args.update(camera_dir=f"camera/{n}", lo=lo, hi=hi, skip=skip, limit=cam.frame_limit,
                expected=min(selected, cam.frame_limit), output=f"shared/captures/{name}")
    meta = {"id": pid, "camera": n, "start": start_key, "end": end_key, "type": kind, "fileName": name,
            "requestedDateTime": images.key_of(requested), "save": save,
            # The id and requestedDateTime carry whole seconds; this orders requests within one.
            "requested_ns": time.time_ns()}
    await cam.processes.submit(pid, convert.KIND_VIDEO if kind == "mp4" else convert.KIND_ZIP, args, meta)
    return web.json_response({"id": pid, "url": f"/shared/captures/{name}", "frameLimitMet": limit_met})


@routes.post("/convert/createVideo")
async def create_video(request: web.Request) -> web.Response:
    """Start a process that makes an H.264 mp4 of a camera's images in a time range."""
    return await _create(request, "mp4")


@routes.post("/convert/createZip")
async def create_zip(request: web.Request) -> web.Response:
    """Start a process that makes a zip (stored) of a camera's images in a time range."""
    return await _create(request, "zip")


@routes.post("/convert/listFramesVideo")
async def list_frames(request: web.Request) -> web.Response:
    """Links to `frames` images evenly spaced over a time range, for scrubbing."""
    body = await json_object(request)
    cam = request.app[CAMERA]
    n = await _camera(request, body)
    start, end = _range(request, body)
    frames = _int_field(body, "frames", None, minimum=FRAMES["minimum"])
    if frames > cam.frame_limit:
        raise BadRequest(f"frames must be at most {cam.frame_limit}")
    lo, hi = images.range_bounds(start, end)
    paths = await asyncio.to_thread(images.spaced, cam.camera_dir(n), lo, hi, frames)
    return web.json_response({"list": [f"/data/camera/{n}/{p.parent.name}/{p.name}" for p in paths]})


async def _process_id(request: web.Request) -> str:
    body = await json_object(request)
    return convert.check_process_id(body.get("id"))


@routes.post("/convert/statusProcess")
async def status_process(request: web.Request) -> web.Response:
    """Whether a video/zip process is still running (plus status, progress, error)."""
    pid = await _process_id(request)
    return web.json_response(await request.app[CAMERA].processes.status(pid))


@routes.post("/convert/cancelProcess")
async def cancel_process(request: web.Request) -> web.Response:
    """Stop a running process and remove it and its partial output."""
    pid = await _process_id(request)
    cancelled = await request.app[CAMERA].processes.cancel(pid)
    return web.json_response({"cancelled": cancelled, "id": pid})


@routes.post("/convert/listProcess")
async def list_process(request: web.Request) -> web.Response:
    """Every video/zip process as a ProcessObj, oldest request first."""
    await json_object(request, optional=True)
    return web.json_response({"list": await request.app[CAMERA].processes.list()})


@routes.post("/convert/deleteProcess")
async def delete_process(request: web.Request) -> web.Response:
    """Delete a process and its output (cancelling it first if it runs)."""
    pid = await _process_id(request)
    deleted = await request.app[CAMERA].processes.delete(pid)
    return web.json_response({"deleted": deleted, "id": pid})


# -- /file -------------------------------------------------------------------------

@routes.post("/file/pathSize")
async def path_size(request: web.Request) -> web.Response:
    """Bytes under a camera's folder, also human-readable."""
    body = await json_object(request)
    n = await _camera(request, body)
    size, _ = await asyncio.to_thread(usage.usage, request.app[CAMERA].camera_dir(n))
    return web.json_response({"size": usage.human_size(size), "bytes": size})


@routes.post("/file/pathFileCount")
async def path_file_count(request: web.Request) -> web.Response:
    """Number of files under a camera's folder."""
    body = await json_object(request)
    n = await _camera(request, body)
    _, count = await asyncio.to_thread(usage.usage, request.app[CAMERA].camera_dir(n))
    return web.json_response({"count": count})


@routes.post("/file/pathDelete")
async def path_delete(request: web.Request) -> web.Response:
    """Delete every image of a camera."""
    body = await json_object(request)
    n = await _camera(request, body)
    meant, gone = await asyncio.to_thread(usage.delete_all, request.app[CAMERA].camera_dir(n))
    return web.json_response({"deleted": gone == meant, "count": gone})


@routes.post("/file/pathClean")
async def path_clean(request: web.Request) -> web.Response:
    """Delete a camera's images older than `days` days; answers how sure it is they are gone."""
    body = await json_object(request)
    n = await _camera(request, body)
    days = body.get("days")
    if not _is_number(days):
        raise missing_or_mistyped("days", days, "delete images older than this many days (a number)")
    if days < DAYS["minimum"]:
        raise BadRequest("days must not be negative")
    cam = request.app[CAMERA]
    now = datetime.now(cam.tz).replace(tzinfo=None)
    cutoff = images.older_than(days, now)
    meant, gone = await asyncio.to_thread(usage.clean_older, cam.camera_dir(n), cutoff,
                                          time.time() - days * 86400)
    confidence = 1.0 if meant == 0 else round(gone / meant, 4)
    return web.json_response({"deleted": gone == meant, "confidence": confidence, "count": gone})


# -- /shared -----------------------------------------------------------------------

@routes.get("/shared")
async def shared_root(request: web.Request) -> web.StreamResponse:
    """Redirect to /shared/."""
    raise web.HTTPMovedPermanently(location="/shared/")


@routes.get("/shared/{path:.*}")
async def shared(request: web.Request) -> web.StreamResponse:
    """A shared directory as a web page, or one of its files (with Range)."""
    root = request.app[CAMERA].shared_root
    with contextlib.suppress(FileExistsError):
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    return await serve_tree(request, root, request.match_info["path"])
