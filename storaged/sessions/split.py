"""The split job: cut every race out of a session video in one ffmpeg pass.

Runs inside a job worker (``storaged.jobs.worker``), so blocking code is fine
here and everything it needs comes in ``ctx.args``::

    {"session_id": 3, "source": "file:/data/ab/cdef…/session.mp4" or "https://…",
     "races": [{"race_id": 7, "start_time": 12.5, "duration": 90.0}, …],
     "accurate": false, "file_id": "cdef…" (when the video is a stored object)}

One ffmpeg process reads the source once and writes one output per race
(``-ss``/``-t`` as *output* options), so an hour-long session is demuxed once
however many races it holds; ffmpeg stops reading as soon as the last race
has ended.

*Stream copy* (the default) cannot start a clip between keyframes.  Instead
of starting late (ffmpeg drops the leading non-keyframes of a copied stream),
each clip starts at the last keyframe at or before the race start, found for
all races with one seeking ffprobe call; the clip therefore holds the whole
race plus at most one GOP before it, and the result says where the clip
really starts (``clip_start``, in session seconds).  ``accurate`` re-encodes
(H.264/AAC) and cuts on the exact frame.

The keyframes and the duration of a video in the store are cached beside
the object (``storaged.sessions.keyframes``, written while ffmpeg cuts): a
split of the same video with known starts, or an accurate one, runs no
ffprobe.

Races that do not lie inside the video are reported as errors and the rest
are split.  All clips are moved into the content-addressed store in one
group commit (``ctx.store_files``: hashes and fsyncs overlap), so each is
durable before the job's results say done; the results list, per race, the
download link or the error.  The job never touches race records: the daemon applies the
results (see storaged.sessions.service).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from storaged.errors import BadRequest
from storaged.sessions import keyframes
from storaged.store.layout import Layout
from storaged.supervise import ffmpeg as ff

log = logging.getLogger("storaged.sessions")

# Seconds before a keyframe's decode time at which a copied clip is cut, so
# that the keyframe itself passes ffmpeg's ``dts >= start`` test.
CUT_EPSILON = 0.001
# A race may end this much after the video's last timestamp (rounding).
END_TOLERANCE = 0.1
COPY_CONTAINERS = {"mp4", "mov", "mkv", "webm", "ts"}


def container_for(source: str, accurate: bool) -> str:
    if accurate:
        return "mp4"
    ext = source.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
    return ext if ext in COPY_CONTAINERS else "mp4"


def check_races(races: list[dict[str, Any]], video_duration: float) -> tuple[list[dict], dict[int, str]]:
    """Split the asked races into those inside the video and errors by race id."""
    ok, errors = [], {}
    for race in races:
        start, length = float(race["start_time"]), float(race["duration"])
        end = start + length
        if length <= 0:
            errors[race["race_id"]] = "race has a duration of 0 s: nothing to cut"
        elif start >= video_duration:
            errors[race["race_id"]] = (f"race starts at {start:g} s, after the end of the session video "
                                       f"({video_duration:g} s)")
        elif end > video_duration + END_TOLERANCE:
            errors[race["race_id"]] = (f"race ends at {end:g} s, after the end of the session video "
                                       f"({video_duration:g} s)")
        else:
            ok.append(race)
    return ok, errors


def probe_source(source: str, starts: list[float], timeout: float = 120.0) -> tuple[dict, list[dict | None] | None]:
    """The source's duration, container and video stream, and for each start the keyframe at or before it.

    One ffprobe call (a process start costs as much as the lookups): the format's duration, the first
    video stream, and per start a backward seek plus one packet (``-read_intervals S%+#1``).  A seek
    lands on a keyframe at or before S in indexed containers (mp4, mkv); for formats that seek
    approximately (MPEG-TS) the packet found may not qualify, and that start stays as asked
    (``None``).  The list is None when the answers cannot be told apart (a seek past the end may
    answer no packet).  Raises FFmpegError when the source cannot be read.
    """
    argv = [ff.FFPROBE, "-v", "error", "-select_streams", "v:0", "-of", "json",
            "-show_entries", "format=duration,format_name:stream=index,codec_type,duration"]
    if starts:
        argv[-1] += ":packet=pts_time,dts_time,flags"
        argv += ["-read_intervals", ",".join(f"{s:.6f}%+#1" for s in starts)]
    argv.append(source)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ff.FFmpegError(f"ffprobe timed out after {timeout}s reading the session video") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()[-ff.STDERR_TAIL_LINES:]
        raise ff.FFmpegError("ffprobe could not read the session video", lines, done.returncode)
    info = json.loads(done.stdout or b"{}")
    packets = info.pop("packets", [])
    if len(packets) != len(starts):  # a seek past the end may answer no packet: answers misalign
        return info, None
    out: list[dict | None] = []
    for start, packet in zip(starts, packets):
        try:
            pts = float(packet["pts_time"])
            dts = float(packet.get("dts_time", pts))
        except (KeyError, TypeError, ValueError):
            out.append(None)
            continue
        if "K" in packet.get("flags", "") and pts <= start + 1e-6:
            out.append({"pts": pts, "dts": min(dts, pts)})
        else:
            out.append(None)
    return info, out


def plan_cuts(races: list[dict], keyframes: list[dict | None] | None, accurate: bool) -> list[dict]:
    """Per race: the output ``-ss``/``-t`` and where the clip starts in session time."""
    cuts = []
    for i, race in enumerate(races):
        start, length = float(race["start_time"]), float(race["duration"])
        end = start + length
        kf = keyframes[i] if keyframes else None
        if accurate or kf is None:
            cut_start, clip_start = start, start
        else:
            cut_start, clip_start = max(0.0, kf["dts"] - CUT_EPSILON), kf["pts"]
        cuts.append({"race": race, "ss": cut_start, "t": end - cut_start, "clip_start": clip_start,
                     "clip_duration": end - clip_start})
    return cuts


def ffmpeg_args(source: str, cuts: list[dict], outputs: list[Path], accurate: bool) -> list[str]:
    """ffmpeg argv (after the binary): one input, one output per cut, plus a null output for progress."""
    args = ["-i", source]
    last_end = 0.0
    for cut, out in zip(cuts, outputs):
        args += ["-map", "0:v:0", "-map", "0:a?", "-ss", f"{cut['ss']:.6f}", "-t", f"{cut['t']:.6f}"]
        if accurate:
            args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-b:a", "128k"]
        else:
            args += ["-c", "copy"]
        if out.suffix in (".mp4", ".mov"):
            args += ["-movflags", "+faststart"]
        args.append(str(out))
        last_end = max(last_end, cut["ss"] + cut["t"])
    # The clips' own timestamps start at 0 each, so ffmpeg's reported time says nothing about
    # how far the input has been read; an uncut copy of the video into the null muxer does,
    # for the price of passing packets along.  It ends with the last race, as ffmpeg does.
    args += ["-map", "0:v:0", "-c", "copy", "-t", f"{last_end:.6f}", "-f", "null", "-"]
    return args


def seeks_exactly(info: dict) -> bool:
    """Whether the container has an index, so that a seek lands on the last keyframe at or before."""
    names = str(info.get("format", {}).get("format_name", "")).split(",")
    return any(name in ("mov", "mp4", "matroska") for name in names)


def video_facts(ctx, source: str, starts: list[float]) -> keyframes.Keyframes:
    """The video's duration and, for every start, the keyframe at or before it: from the cache beside
    the stored object when it has them all, else from one seeking ffprobe (see storaged.sessions.keyframes)."""
    file_id, size = ctx.args.get("file_id"), None
    if file_id and source.startswith("file:"):
        try:
            size = os.stat(source[len("file:"):]).st_size
        except OSError:
            pass  # ffprobe says what is wrong with the source
    known = keyframes.load(Layout(ctx.data_dir), file_id, size) if size is not None else None
    if known is not None:
        missing = [s for s in starts if s < known.duration and not known.knows(s)]
        if missing:
            found = probe_source(source, missing)[1]
            if found is not None:
                known.learn(missing, found)
        return known
    info, found = probe_source(source, starts)
    if not info.get("streams"):
        raise BadRequest("the session video has no video stream")
    video_duration = ff.duration_of(info)
    if video_duration is None:
        raise BadRequest("cannot tell the duration of the session video")
    known = keyframes.Keyframes(file_id if size is not None else None, size or 0, video_duration,
                                seeks_exactly(info))
    if found is None:
        # Misaligned by a start past the end: ask again for the starts inside the video.
        starts = [s for s in starts if s < video_duration]
        found = probe_source(source, starts)[1] if starts else []
    if found is not None:
        known.learn(starts, found)
    return known


def split_races(ctx) -> dict[str, Any]:
    args = ctx.args
    source: str = args["source"]
    accurate = bool(args.get("accurate", False))
    session_id = args["session_id"]
    races: list[dict] = args["races"]
    ctx.progress(0.0, force=True)

    known = video_facts(ctx, source, [] if accurate else [float(r["start_time"]) for r in races])
    video_duration = known.duration
    ok, errors = check_races(races, video_duration)
    keyframes_found = None if accurate else [known.keyframe(float(r["start_time"])) for r in ok]
    cuts = plan_cuts(ok, keyframes_found, accurate)
    ext = container_for(source, accurate)
    outputs = [ctx.job_dir / f"race-{c['race']['race_id']}.{ext}" for c in cuts]
    with ThreadPoolExecutor(max_workers=1) as background:
        # What was learnt goes beside the object while ffmpeg cuts (a cache: its failure costs a probe).
        saving = background.submit(keyframes.save, Layout(ctx.data_dir), known) \
            if known.changed and known.file_id else None
        if cuts:
            last_end = max(c["ss"] + c["t"] for c in cuts)
            ctx.ffmpeg(ffmpeg_args(source, cuts, outputs, accurate), duration=last_end, progress_span=(0.02, 0.95))
        if saving is not None:
            try:
                saving.result()
            except Exception as exc:
                log.warning("could not save the keyframe cache of %s: %s", known.file_id, exc)

    # One group commit for all clips: hashes and fsyncs overlap, and each step's fsyncs for all
    # clips share the filesystem's journal commits.  Every clip is durable before results.json.
    made = []
    for cut, out in zip(cuts, outputs):
        race_id = cut["race"]["race_id"]
        if not out.exists() or out.stat().st_size == 0:
            errors[race_id] = "ffmpeg wrote nothing for this race"
        else:
            made.append((cut, out))
    stored_all = ctx.store_files([(out, f"session-{session_id}-race-{cut['race']['race_id']}.{ext}", None)
                                  for cut, out in made])
    clips: dict[int, dict] = {}
    for (cut, _), stored in zip(made, stored_all):
        clips[cut["race"]["race_id"]] = {
            "video_url": stored["download"], "file_id": stored["file_id"], "size": stored["size"],
            "clip_start": round(cut["clip_start"], 6), "clip_duration": round(cut["clip_duration"], 6)}
    ctx.progress(1.0)

    report = []
    for race in races:
        entry = {"race_id": race["race_id"], "start_time": race["start_time"], "duration": race["duration"]}
        if race["race_id"] in clips:
            entry.update(clips[race["race_id"]])
        else:
            entry["error"] = errors.get(race["race_id"], "not split")
        report.append(entry)
    return {"session_id": session_id, "accurate": accurate, "video_duration": video_duration,
            "split": len(clips), "failed": len(races) - len(clips), "races": report}
