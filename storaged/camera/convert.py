"""Images -> mp4 / zip: the job functions (worker side) and the process service (daemon side).

Protocol
--------
*A process is a job directory* ``<data>/camera/processes/<id>/`` run by the
job engine (storaged.jobs): ``config.json`` holds the request and the
ProcessObj fields (camera, start, end, requested, type, fileName, save),
``inrun.pid`` marks a live worker, ``results.json`` is written last.  The
list of processes is the list of these directories; nothing is kept in
memory, so processes survive a daemon restart (a live worker is adopted and
finishes; one that died meanwhile is marked failed, "interrupted").

*Output.*  The worker writes ``<job>/output.<type>`` (the ffconcat list for
ffmpeg also lives in the job dir), fsyncs it and renames it to
``<data>/shared/captures/<fileName>`` (same filesystem), then fsyncs that
directory: a file under its final name is always complete.  Cancel and
delete remove the job directory (with any partial output) and the final
file; a worker killed before its rename leaves nothing in ``captures``.

*Memory.*  The worker streams the selected image paths into the list file /
the zip one at a time (holding one day's names for sorting); zip members are
copied in chunks by ``zipfile``, stored (not deflated: JPEGs do not shrink).

*Expiry.*  Outputs asked with ``save: false`` are removed, with their job
directory, ``camera_output_expiry`` after ``results.json`` was written (a
periodic sweep in the daemon).  Delete and the sweep take the process's
lock so they do not race each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import string
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from storaged.camera import images
from storaged.errors import BadRequest, NotFound, missing_or_mistyped
from storaged.store.atomic import async_lock, fsync_dir, unlink_quiet
from storaged.supervise.ffmpeg import concat_quote
from storaged.supervise.process import wait_group_gone

log = logging.getLogger("storaged.camera")

KIND_VIDEO = "storaged.camera.convert:create_video"
KIND_ZIP = "storaged.camera.convert:create_zip"
PROCESS_ID_RE = re.compile(r"^[A-Za-z0-9]{8}-\d{8}-\d{6}$")
ALNUM = string.ascii_letters + string.digits
LIST_FILE = "frames.ffconcat"


# -- naming ------------------------------------------------------------------------

def new_process_id(requested: datetime) -> str:
    """``[RandomAlphaNumeric]-[requestDateTime]``."""
    return "".join(secrets.choice(ALNUM) for _ in range(8)) + "-" + images.key_of(requested)


def check_process_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise missing_or_mistyped("id", None if value == "" else value, "a process id (a string) as answered by createVideo/createZip")
    if not PROCESS_ID_RE.match(value):
        raise NotFound("process not found")
    return value


def output_name(camera: int, start: str, end: str, pid: str, kind: str) -> str:
    """``output_[camera]_[start]_[end]_[ID].[type]``."""
    return f"output_{camera}_{start}_{end}_{pid}.{kind}"


# -- worker side -------------------------------------------------------------------

def _publish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def _selection(ctx) -> tuple[Path, Any]:
    a = ctx.args
    cam_dir = ctx.data_dir / a["camera_dir"]
    return cam_dir, images.select(cam_dir, a["lo"], a["hi"], int(a["skip"]), int(a["limit"]))


def jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without starting ffprobe; None if unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(65536)
    except OSError:
        return None
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def create_video(ctx) -> dict:
    """An H.264 mp4 of the selected images through an ffconcat list (no argv limits)."""
    a = ctx.args
    fps = float(a["fps"])
    expected = max(1, int(a.get("expected", 1)))
    duration = f"{1.0 / fps:.6f}"
    _, selection = _selection(ctx)
    list_path = ctx.job_dir / LIST_FILE
    count = 0
    first: Path | None = None
    with open(list_path, "w", encoding="utf-8") as fh:
        fh.write("ffconcat version 1.0\n")
        for path in selection:
            if first is None:
                first = path
            fh.write(f"file {concat_quote(path)}\nduration {duration}\n")
            count += 1
            if count % 1000 == 0:
                ctx.progress(0.05 * count / expected)
    if count == 0 or first is None:
        raise BadRequest("no images between start and end")
    size = jpeg_size(first)
    if size is None:
        info = ctx.probe(first)
        video = next((s for s in info.get("streams", []) if s.get("codec_type") == "video"), {})
        size = int(video.get("width") or 2), int(video.get("height") or 2)
    width, height = size
    # Even dimensions (yuv420p needs them), and a fixed size: a camera that
    # changed resolution mid-range must not make the encoder fail.
    width, height = max(2, width - width % 2), max(2, height - height % 2)
    tmp = ctx.job_dir / "output.mp4"
    ctx.ffmpeg(["-f", "concat", "-safe", "0", "-i", str(list_path),
                "-vf", f"scale={width}:{height},format=yuv420p",
                "-c:v", "libx264", "-preset", str(a.get("preset", "veryfast")), "-crf", str(a.get("crf", 23)),
                "-pix_fmt", "yuv420p", "-r", f"{fps:g}", "-movflags", "+faststart", "-f", "mp4", str(tmp)],
               duration=count / fps, progress_span=(0.05, 0.99))
    final = ctx.data_dir / a["output"]
    _publish(tmp, final)
    unlink_quiet(list_path)
    return {"frames": count, "fileName": final.name, "size": final.stat().st_size}


def create_zip(ctx) -> dict:
    """A stored (not deflated) zip of the selected images, streamed member by member."""
    a = ctx.args
    expected = max(1, int(a.get("expected", 1)))
    _, selection = _selection(ctx)
    tmp = ctx.job_dir / "output.zip"
    count = 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in selection:
            try:
                zf.write(path, arcname=path.name)
            except FileNotFoundError:
                continue  # cleaned away while we worked: the zip holds what still exists
            count += 1
            ctx.progress(count / expected)
    if count == 0:
        raise BadRequest("no images between start and end")
    final = ctx.data_dir / a["output"]
    _publish(tmp, final)
    return {"frames": count, "fileName": final.name, "size": final.stat().st_size}


# -- daemon side -------------------------------------------------------------------

class ProcessService:
    """Submit, list, cancel and delete convert processes; expire unsaved outputs."""

    def __init__(self, jobs, layout, *, expiry: float) -> None:
        self.jobs = jobs
        self.layout = layout
        self.root = layout.root / "camera" / "processes"
        self.captures = layout.root / "shared" / "captures"
        self.expiry = expiry

    def job_dir(self, pid: str) -> Path:
        return self.root / check_process_id(pid)

    def _lock(self, pid: str):
        return async_lock(self.layout.lock_for("camera-process", pid))

    async def submit(self, pid: str, kind: str, args: dict, meta: dict) -> None:
        await self.jobs.submit(self.job_dir(pid), kind, args, meta=meta)

    @staticmethod
    def process_obj(config: dict, running: bool) -> dict:
        return {
            "link": "/shared/captures/" + config["fileName"],
            "type": config["type"],
            "id": config["id"],
            "requested": config["requestedDateTime"],
            "camera": config["camera"],
            "start": config["start"],
            "end": config["end"],
            "running": running,
        }

    async def state(self, pid: str):
        try:
            return await self.jobs.state(self.job_dir(pid))
        except NotFound:
            raise NotFound("process not found") from None

    async def status(self, pid: str) -> dict:
        state = await self.state(pid)
        running = not state.final
        out = {"running": running, "id": pid, "status": state.status, "progress": state.progress,
               "link": "/shared/captures/" + state.config.get("fileName", "")}
        if state.status == "done":
            out["frames"] = (state.results or {}).get("frames")
        if state.error:
            out["error_message"] = state.error
        return out

    async def list(self) -> list[dict]:
        names = await asyncio.to_thread(_listdir, self.root)
        found = []
        for name in names:
            if not PROCESS_ID_RE.match(name):
                continue
            try:
                state = await self.jobs.state(self.root / name)
            except NotFound:
                continue
            # Oldest request first: its second (in the id), then its time within the second (processes
            # made before requested_ns was kept have none and go first), then the id.
            requested_ns = state.config.get("requested_ns")
            found.append(((name[9:], requested_ns if isinstance(requested_ns, int) else 0, name), state))
        out = []
        for _, state in sorted(found, key=lambda item: item[0]):
            try:
                out.append(self.process_obj(state.config, not state.final))
            except KeyError:
                continue
        return out

    async def cancel(self, pid: str) -> bool:
        """Stop the worker (and its ffmpeg), remove the job and any output.  False if already finished."""
        async with self._lock(pid):
            state = await self.state(pid)
            if state.final:
                return False
            await self.jobs.cancel(self.job_dir(pid), remove=True)
            if state.worker is not None:
                # The runner stops when the worker is gone; its ffmpeg got the same
                # signal but may still be flushing.  Answer only when it is gone too.
                await asyncio.to_thread(wait_group_gone, state.worker.pid)
            await asyncio.to_thread(self._remove_output, state.config)
        return True

    async def delete(self, pid: str) -> bool:
        async with self._lock(pid):
            state = await self.state(pid)
            await self.jobs.cancel(self.job_dir(pid), remove=True)
            await asyncio.to_thread(self._remove_output, state.config)
        return True

    def _remove_output(self, config: dict) -> None:
        name = config.get("fileName", "")
        if name and "/" not in name and not name.startswith("."):
            unlink_quiet(self.captures / name)

    async def sweep(self) -> int:
        """Remove finished unsaved processes older than the expiry; answer how many."""
        removed = 0
        for name in await asyncio.to_thread(_listdir, self.root):
            if not PROCESS_ID_RE.match(name):
                continue
            try:
                state = await self.jobs.state(self.root / name)
            except NotFound:
                continue
            if not state.final or state.config.get("save", True):
                continue
            finished = await asyncio.to_thread(_mtime, self.root / name / "results.json")
            if finished is None or time.time() - finished < self.expiry:
                continue
            try:
                await self.delete(name)
            except NotFound:
                continue
            removed += 1
            log.info("expired unsaved camera output %s", name)
        return removed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
