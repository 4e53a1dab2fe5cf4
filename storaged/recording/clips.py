"""Clips: a wall-clock range of a recorded stream -> stream-copied mp4 files.

Protocol
--------
A clip is a job of the job engine (storaged.jobs.runner) in
``<data>/streams/<id>/clips/<clip_id>/``, whose id is a hash of (stream,
start, stop, mode), so asking again answers the same job.  It has the
engine's one state machine and files: ``config.json`` (what was asked,
written durably with the job's queue entry), ``inrun.pid`` while it is cut,
``results.json`` (written last, atomically) when done or failed; janitor
expiry (kind ``clips``), fsck and /metrics see it like every job.  The kind
runs *in process* (:meth:`JobRunner.in_process`): the cut is ~0.1 s of
stream copy, and a worker's fork plus the client's wait for it would cost
as much again.  It takes a slot of ``job_concurrency`` like any job.  The
cut (:meth:`ClipService.cut`): one ffmpeg per continuous stretch of
recording (``-f concat`` with inpoint/outpoint on the first and last
segment, ``-c copy``, ``+faststart``); each mp4 becomes a content-addressed
object and is removed from the job directory.

*What a reader sees.*  The engine's states: queued or running answer
``processing``, done answers its results, failed answers 500 ``Cannot cut
clip: ...``.  Readers take no lock.

*Who waits.*  A request submits the job (or finds it) and waits up to
``stream_clip_wait`` for it to settle (:meth:`JobRunner.settled`, woken as
the cut ends); a second request for a job in flight waits on the same job,
never starts another.  A request that finds the job failed asks the engine
to retry it (``submit(retry=True)``): asking again cuts again.  A range whose
end is not recorded yet answers ``pending`` and submits nothing.

*What a crash leaves.*  The engine's: a daemon killed mid-cut leaves
``inrun.pid`` naming it, so the job reads failed ("interrupted") and the
next request cuts again from scratch (a half-written mp4 in the job
directory is overwritten); a daemon that stops cleanly leaves the job
queued, and the next start cuts it.  The clip itself goes through the
object store durably.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

from storaged.errors import BadRequest, NotFound, StoragedError
from storaged.jobs.runner import JobRunner
from storaged.supervise import ffmpeg
from storaged.recording import index as idx
from storaged.recording.supervisor import StreamService
from storaged.store.objects import ObjectStore

log = logging.getLogger("storaged.clips")

# The job kind (the name config.json has always carried): run in process, see cut_clips.
KIND = "storaged.recording.clips:cut_clips"
MIN_PIECE = 0.04  # shorter overlaps than one frame are not worth a clip


MODES = ("copy", "accurate")


def clip_id(stream_id: int, start: float, stop: float | None, mode: str = "copy") -> str:
    # v2: a copy clip starts at the keyframe at or before start (v1 let the concat inpoint drop frames).
    fmt = "mp4-copy-v2" if mode == "copy" else "mp4-accurate-v1"
    key = f"stream={stream_id}\nstart={start!r}\nstop={stop!r}\nformat={fmt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def interval(a: float, b: float) -> dict[str, float]:
    return {"start": round(a, 3), "stop": round(b, 3)}


def plan(segments: list[idx.Segment], start: float, stop: float) -> dict[str, Any]:
    """Which segments (and offsets into the first and last) make each clip; what is covered and missing."""
    clips = []
    for group in idx.groups(segments):
        a, b = max(start, group[0].start), min(stop, group[-1].end)
        if b - a < MIN_PIECE:
            continue
        items = []
        for seg in group:
            if seg.end <= a or seg.start >= b:
                continue
            cut_in = a - seg.start if a > seg.start else None
            cut_out = b - seg.start if b < seg.end else None
            items.append((seg, cut_in, cut_out))
        if items:
            clips.append({"start": a, "stop": b, "items": items})
    missing = []
    cursor = start
    for c in clips:
        if c["start"] - cursor >= MIN_PIECE:
            missing.append(interval(cursor, c["start"]))
        cursor = max(cursor, c["stop"])
    if stop - cursor >= MIN_PIECE:
        missing.append(interval(cursor, stop))
    return {"clips": clips, "covered": [interval(c["start"], c["stop"]) for c in clips], "missing": missing}


def concat_list(items, paths: list[Path]) -> tuple[str, float]:
    """An ffconcat script, and how many seconds before the first item's cut-in point the clip starts.

    inpoint/outpoint are on each file's own timestamps (offset by its start).
    The inpoint is the keyframe at or before the cut-in point: a stream copy
    can only start on one, and starting anywhere else would leave frames
    that cannot be decoded (or, with ffmpeg's concat demuxer, silently drop
    the picture up to the next keyframe).
    """
    lines = ["ffconcat version 1.0"]
    lead = 0.0
    for i, ((seg, cut_in, cut_out), path) in enumerate(zip(items, paths)):
        lines.append(f"file {ffmpeg.concat_quote(path)}")
        base = None
        if cut_in is not None or cut_out is not None:
            base = idx.ts_start_time(path) or 0.0
        if cut_in is not None:
            target = base + cut_in
            keyframes = [k for k in idx.ts_keyframes(path) if k <= target + 1e-4] if i == 0 else []
            inpoint = max(keyframes) if keyframes else target
            lead = target - inpoint
            lines.append(f"inpoint {inpoint:.6f}")
        if cut_out is not None:
            lines.append(f"outpoint {base + cut_out:.6f}")
    return "\n".join(lines) + "\n", lead


def copy_args(first: Path) -> list[str]:
    """Stream-copy options for an MP4 made from MPEG-TS segments: AAC in ADTS needs its headers rewritten."""
    return ["-c", "copy", *(["-bsf:a", "aac_adtstoasc"] if 0x0F in idx.ts_stream_types(first) else [])]


def clip_name(stream_id: int, start: float) -> str:
    stamp = datetime.fromtimestamp(start, timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"stream{stream_id}-{stamp}Z.mp4"


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk
    finally:
        fh.close()


class ClipService:
    def __init__(self, streams: StreamService, objects: ObjectStore, jobs: JobRunner, wait: float) -> None:
        self.streams = streams
        self.objects = objects
        self.jobs = jobs
        self.wait = wait

    def job_dir(self, stream_id: int, cid: str) -> Path:
        return self.streams.stream_dir(stream_id) / "clips" / cid

    async def request(self, raw_id: Any, start: float, stop: float | None, mode: str = "copy") -> dict[str, Any]:
        record = await self.streams.record(raw_id)
        stream_id = record["id"]
        state = await self.streams.read_state(stream_id)
        if record.get("start_date") is None and not state.get("runs"):
            raise StoragedError("Stream not started", status=500)
        if stop is not None and stop <= start:
            raise BadRequest("stop must be later than start")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of: {', '.join(MODES)}")
        cid = clip_id(stream_id, start, stop, mode)
        jd = self.job_dir(stream_id, cid)
        try:
            job = await self.jobs.state(jd)
        except NotFound:
            job = None
        if job is not None and job.status == "done":
            return job.results or {}
        if (job is None or job.final) and stop is not None and state.get("recording"):
            segments = await asyncio.to_thread(self.streams.index(stream_id).segments)
            until = max((s.end for s in segments), default=None)
            if until is None or until < stop:
                # Not recorded yet: cutting now would fix a clip that is missing its end.
                return {"status": "pending", "clip_id": cid, "start": start, "stop": stop,
                        "recorded_until": None if until is None else round(until, 3)}
        if job is None or job.final or job.status == "queued":
            # (queued: submit also queues again a job whose queue entry a crash kept from being written)
            await self.jobs.submit(jd, KIND, {"stream_id": stream_id, "start": start, "stop": stop, "mode": mode},
                                   retry=True)
        job = await self.jobs.settled(jd, max(self.wait, 0.0))
        if job.status == "done":
            return job.results or {}
        if job.final:
            # The contract knows pending/processing/done and error_message: a failed cut is a 500 in
            # that shape (asking again cuts again), never a fourth status a poll loop would spin on.
            raise StoragedError(f"Cannot cut clip: {job.error or job.status}", status=500, clip_id=cid)
        return {"status": "processing", "clip_id": cid, "start": start, "stop": stop}

    async def cut(self, jd: Path, args: dict[str, Any]) -> dict[str, Any]:
        """The job itself (run by the job engine in the daemon): the clip's results, or an error."""
        stream_id, start, stop, mode = int(args["stream_id"]), args["start"], args["stop"], args.get("mode", "copy")
        cid = jd.name
        began = time.monotonic()
        index = self.streams.index(stream_id)
        # Segments the janitor has removed are still listed by their run; they count as missing.
        segments = await asyncio.to_thread(lambda: [s for s in index.segments() if index.path(s).exists()])
        if stop is None:
            stop_eff = max((s.end for s in segments), default=start)
            stop_eff = max(stop_eff, start)
        else:
            stop_eff = stop
        p = plan(segments, start, stop_eff)
        clips = []
        covered = []
        timings = {"plan": time.monotonic() - began, "ffmpeg": 0.0, "store": 0.0}
        try:
            for i, c in enumerate(p["clips"]):
                paths = [index.path(seg) for seg, _, _ in c["items"]]
                script, lead = await asyncio.to_thread(concat_list, c["items"], paths)
                lst = jd / f"clip{i}.ffconcat"
                out = jd / f"clip{i}.mp4"
                await asyncio.to_thread(lst.write_text, script)
                t = time.monotonic()
                if mode == "accurate":
                    # Decode from the keyframe, drop what precedes start, encode: the first frame is start's.
                    codec = ["-ss", f"{lead:.6f}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                             "-pix_fmt", "yuv420p", "-c:a", "aac"]
                    first = c["start"]
                else:
                    codec = await asyncio.to_thread(copy_args, paths[0])
                    first = c["start"] - lead
                await ffmpeg.run(ffmpeg.base_args() + ["-f", "concat", "-safe", "0", "-i", str(lst),
                                                       *codec, "-movflags", "+faststart", str(out)])
                timings["ffmpeg"] += time.monotonic() - t
                held = _video_duration(await ffmpeg.probe(out))
                # What the clip really holds: its first frame's time, and its first frame plus its length.
                c["start"], c["stop"] = first, first + held if held is not None else c["stop"]
                covered.append(interval(c["start"], c["stop"]))
                t = time.monotonic()
                name = clip_name(stream_id, c["start"])
                meta = await self.objects.put(_file_chunks(out), name, "video/mp4")
                timings["store"] += time.monotonic() - t
                await asyncio.to_thread(os.unlink, out)
                clips.append({"file_id": meta["file_id"], "name": meta["name"], "size": meta["size"],
                              "download": f"/download/{meta['file_id']}/{meta['stored_name']}",
                              "start": round(c["start"], 3), "stop": round(c["stop"], 3),
                              "duration": round(c["stop"] - c["start"], 3),
                              "segments": len(paths)})
        except ffmpeg.FFmpegError as exc:
            log.error("stream %d: clip %s failed: %s %s", stream_id, cid, exc, exc.stderr)
            raise
        return {"clip_id": cid, "start": start, "stop": stop_eff, "mode": mode,
                "clips": clips, "covered": covered, "missing": p["missing"],
                "seconds": round(time.monotonic() - began, 3),
                "timings": {k: round(v, 3) for k, v in timings.items()}}


async def cut_clips(service: ClipService, jd: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The job KIND names; the family's setup registers it with the engine, bound to its service."""
    return await service.cut(jd, args)


def _video_duration(info: dict[str, Any]) -> float | None:
    """Seconds of picture in a clip: its video stream's duration (the format's when it has none)."""
    for stream in info.get("streams", []):
        if stream.get("codec_type") == "video" and stream.get("duration") not in (None, "N/A"):
            return float(stream["duration"])
    return ffmpeg.duration_of(info)
