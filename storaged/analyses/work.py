"""The analyses behind POST /analyse: argument schemas (checked in the daemon) and
their work (run in a worker process, see storaged.jobs.worker).

An analysis id is the SHA-256 of (file id, analysis name, canonical args),
cut to 40 hex digits: asking twice for the same work names the same job.
Canonical args are the validated args with defaults filled in, serialised as
sorted, compact JSON, so ``{"seconds": 1}`` and ``{"seconds": 1.0}`` differ
only if their validated values differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from storaged.errors import BadRequest
from storaged.schema import object_schema
from storaged.store.layout import OBJECT_ID_SCHEMA
from storaged.supervise import ffmpeg as ff
from storaged.store.atomic import read_json, write_json

ANALYSIS_ID_RE = re.compile(r"^[0-9a-f]{40}$")
KIND = "storaged.analyses.work:run"
_REQUIRED = object()
MAX_SEGMENTS = 100


@dataclass(frozen=True)
class Arg:
    name: str
    type: str  # number | integer | boolean | string | segments
    help: str
    default: Any = _REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple = ()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "help": self.help,
                               "required": self.default is _REQUIRED}
        if self.default is not _REQUIRED:
            out["default"] = self.default
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    def json_schema(self) -> dict[str, Any]:
        """What ``_coerce`` accepts for this argument, as JSON Schema."""
        if self.type == "segments":
            segment = {"type": "object", "required": ["start", "duration"], "additionalProperties": False,
                       "properties": {"start": {"type": "number", "minimum": 0},
                                      "duration": {"type": "number", "exclusiveMinimum": 0}}}
            out: dict[str, Any] = {"type": "array", "minItems": 1, "maxItems": MAX_SEGMENTS, "items": segment}
        else:
            out = {"type": self.type}
        out["description"] = self.help
        if self.default is not _REQUIRED and self.default is not None:
            out["default"] = self.default
        if self.minimum is not None:
            out["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["enum"] = list(self.choices)
        return out


@dataclass(frozen=True)
class Analysis:
    name: str
    help: str
    result: dict[str, str]
    run: Callable[["Any"], dict[str, Any]]
    args: tuple[Arg, ...] = ()
    check: Callable[[dict[str, Any]], None] | None = None
    outputs: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "args": [a.describe() for a in self.args],
                "result": self.result}

    def args_schema(self) -> dict[str, Any]:
        """The JSON Schema of this analysis' ``args`` (what ``validate`` accepts)."""
        return object_schema({a.name: a.json_schema() for a in self.args},
                             [a.name for a in self.args if a.default is _REQUIRED], description=self.help)


def _number(arg: Arg, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"argument {arg.name!r} must be a number")
    if arg.minimum is not None:
        if arg.exclusive_minimum and value <= arg.minimum:
            raise BadRequest(f"argument {arg.name!r} must be greater than {arg.minimum:g}")
        if not arg.exclusive_minimum and value < arg.minimum:
            raise BadRequest(f"argument {arg.name!r} must be at least {arg.minimum:g}")
    if arg.maximum is not None and value > arg.maximum:
        raise BadRequest(f"argument {arg.name!r} must be at most {arg.maximum:g}")
    return float(value)


def _coerce(arg: Arg, value: Any) -> Any:
    if arg.type == "number":
        return _number(arg, value)
    if arg.type == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"argument {arg.name!r} must be an integer")
        return int(_number(arg, value))
    if arg.type == "boolean":
        if not isinstance(value, bool):
            raise BadRequest(f"argument {arg.name!r} must be true or false")
        return value
    if arg.type == "string":
        if not isinstance(value, str) or (arg.choices and value not in arg.choices):
            raise BadRequest(f"argument {arg.name!r} must be one of {list(arg.choices)}")
        return value
    if arg.type == "segments":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_SEGMENTS:
            raise BadRequest(f"argument {arg.name!r} must be a list of 1 to {MAX_SEGMENTS} {{start, duration}} objects")
        out = []
        for i, seg in enumerate(value):
            if not isinstance(seg, dict) or set(seg) != {"start", "duration"}:
                raise BadRequest(f"argument '{arg.name}[{i}]' must be an object with exactly start and duration")
            start = _number(Arg(f"{arg.name}[{i}].start", "number", "", minimum=0), seg["start"])
            duration = _number(Arg(f"{arg.name}[{i}].duration", "number", "", minimum=0, exclusive_minimum=True),
                               seg["duration"])
            out.append({"start": start, "duration": duration})
        return out
    raise AssertionError(arg.type)


def validate(analysis: Analysis, args: Any) -> dict[str, Any]:
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    known = {a.name for a in analysis.args}
    unknown = sorted(set(args) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise BadRequest(f"unknown argument {unknown[0]!r} for analysis {analysis.name!r}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for arg in analysis.args:
        if arg.name in args and args[arg.name] is not None:
            out[arg.name] = _coerce(arg, args[arg.name])
        elif arg.default is _REQUIRED:
            raise BadRequest(f"argument {arg.name!r} is required for analysis {analysis.name!r}")
        elif arg.default is not None:
            out[arg.name] = arg.default
    if analysis.check:
        analysis.check(out)
    return out


def canonical(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


def analysis_id(file_id: str, name: str, args: dict[str, Any]) -> str:
    return hashlib.sha256(f"{file_id}\n{name}\n{canonical(args)}".encode()).hexdigest()[:40]


def check_analysis_id(value: str) -> str:
    if not ANALYSIS_ID_RE.match(value or ""):
        raise BadRequest("malformed analysis_id: expected 40 lowercase hex characters")
    return value


def file_facts(object_dir: Path) -> dict[str, Any]:
    """What finished analyses already know of a stored file, running nothing: ``duration`` (the cached
    probe) and a ``thumbnail`` link (the middle frame of a thumbnails result), each None when unknown.
    Blocking."""
    facts: dict[str, Any] = {"duration": None, "thumbnail": None}
    try:
        facts["duration"] = ff.duration_of(read_json(object_dir / "probe.json"))
    except (FileNotFoundError, ValueError, TypeError, AttributeError):
        pass
    try:
        job_names = sorted(os.listdir(object_dir / "analysis"))
    except (FileNotFoundError, NotADirectoryError):
        job_names = []
    for name in job_names:
        try:
            results = read_json(object_dir / "analysis" / name / "results.json")
        except (FileNotFoundError, NotADirectoryError, ValueError):
            continue
        if not isinstance(results, dict) or results.get("status", "done") != "done":
            continue
        thumbs = results.get("thumbnails")
        if facts["thumbnail"] is None and isinstance(thumbs, list) and thumbs:
            facts["thumbnail"] = thumbs[len(thumbs) // 2].get("url")
        result = results.get("result")
        if facts["duration"] is None and isinstance(result, dict) and isinstance(result.get("duration"), (int, float)):
            facts["duration"] = result["duration"]
    return facts


# -- the work (runs in the worker) -------------------------------------------------


def _input(ctx) -> Path:
    return ctx.data_dir / ctx.config["input"]


def _link(ctx, name: str) -> str:
    return f"/download/{ctx.config['file_id']}/analysis/{ctx.config['analysis_id']}/{quote(name)}"


def _probe_input(ctx) -> dict:
    """ffprobe of the input, cached beside it as probe.json (the bytes never change, so neither does it)."""
    cache = _input(ctx).parent / "probe.json"
    try:
        return read_json(cache)
    except (FileNotFoundError, ValueError):
        pass
    info = ctx.probe(_input(ctx))
    write_json(cache, info, durable=False)
    return info


def _duration(ctx) -> float:
    duration = ff.duration_of(_probe_input(ctx))
    if not duration:
        raise BadRequest("the input has no known duration (not a video or audio file?)")
    return duration


def run(ctx) -> dict[str, Any]:
    """The worker entry: dispatch on the analysis name in config.json."""
    return ANALYSES[ctx.config["analysis"]].run(ctx)


def run_dummy(ctx) -> dict[str, Any]:
    seconds = ctx.args["seconds"]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        ctx.progress(elapsed / seconds)
        time.sleep(min(0.1, seconds - elapsed))
    return {"result": {"slept": seconds}}


def run_probe(ctx) -> dict[str, Any]:
    return {"result": ff.summarize(_probe_input(ctx))}


def run_thumbnails(ctx) -> dict[str, Any]:
    every, width = ctx.args["every"], ctx.args["width"]
    duration = _duration(ctx)
    count = max(1, math.ceil(duration / every))
    # The first frame at or after each multiple of `every`, and the time of the frame itself.
    # (fps=1/every would pick the frame nearest the middle of each interval, every/2 late.)
    step = f"{every:.6f}"
    pick = (f"select='isnan(prev_selected_t)+gte(t,(floor(prev_selected_t/{step}+1e-6)+1)*{step})',"
            f"metadata=mode=add:key=storaged.thumb:value=1,metadata=mode=print:file=thumbs.txt,"
            f"scale={width}:-2")
    ctx.ffmpeg(["-i", str(_input(ctx)), "-an", "-vf", pick, "-fps_mode", "vfr", "-frames:v", str(count),
                "-q:v", "4", str(ctx.job_dir / "thumb_%04d.jpg")], duration=duration, progress_span=(0, 0.9),
               cwd=ctx.job_dir)
    thumbs = sorted(p.name for p in ctx.job_dir.glob("thumb_*.jpg"))
    if not thumbs:
        raise BadRequest("the input has no video frames")
    times = [float(m.group(1)) for m in _PTS_TIME_RE.finditer((ctx.job_dir / "thumbs.txt").read_text())]
    columns = min(len(thumbs), 10)
    rows = math.ceil(len(thumbs) / columns)
    ctx.ffmpeg(["-i", str(ctx.job_dir / "thumb_%04d.jpg"), "-vf", f"tile={columns}x{rows}", "-frames:v", "1",
                "-q:v", "4", str(ctx.job_dir / "sprite.jpg")])
    return {
        "thumbnails": [{"time": round(t, 3), "url": _link(ctx, name)} for t, name in zip(times, thumbs)],
        "sprite": _link(ctx, "sprite.jpg"),
        "columns": columns,
        "rows": rows,
        "width": width,
    }


def _cut_args(start: float, duration: float, accurate: bool) -> tuple[list[str], list[str]]:
    before = ["-ss", f"{start:.6f}", "-t", f"{duration:.6f}"]
    if accurate:
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                 "-c:a", "aac", "-b:a", "128k"]
    else:
        codec = ["-c", "copy", "-avoid_negative_ts", "make_zero"]
    return before, codec + ["-movflags", "+faststart"]


def _check_start(start: float, duration: float) -> None:
    if start >= duration:
        raise BadRequest(f"start {start:g}s is beyond the end of the input ({duration:g}s)")


def run_clip(ctx) -> dict[str, Any]:
    args = ctx.args
    total = _duration(ctx)
    start = args["start"]
    _check_start(start, total)
    length = args["duration"] if "duration" in args else args["end"] - start
    length = min(length, total - start)
    before, after = _cut_args(start, length, args["accurate"])
    ctx.ffmpeg([*before, "-i", str(_input(ctx)), "-map", "0:v?", "-map", "0:a?", *after,
                str(ctx.job_dir / "clip.mp4")], duration=length)
    return {"start": start, "duration": length, "accurate": args["accurate"], "video_file": _link(ctx, "clip.mp4")}


def run_split(ctx) -> dict[str, Any]:
    total = _duration(ctx)
    segments = ctx.args["segments"]
    accurate = ctx.args["accurate"]
    for seg in segments:
        _check_start(seg["start"], total)
    inputs: list[str] = []
    outputs: list[str] = []
    clips = []
    for i, seg in enumerate(segments):
        length = min(seg["duration"], total - seg["start"])
        before, after = _cut_args(seg["start"], length, accurate)
        name = f"part_{i + 1:03d}.mp4"
        inputs += [*before, "-i", str(_input(ctx))]
        outputs += ["-map", f"{i}:v?", "-map", f"{i}:a?", *after, str(ctx.job_dir / name)]
        clips.append({"start": seg["start"], "duration": length, "video_file": _link(ctx, name)})
    ctx.ffmpeg([*inputs, *outputs], duration=max(c["start"] + c["duration"] for c in clips))
    return {"clips": clips, "accurate": accurate}


def run_transcode(ctx) -> dict[str, Any]:
    duration = _duration(ctx)
    ctx.ffmpeg(["-i", str(_input(ctx)), "-map", "0:v:0?", "-map", "0:a:0?",
                "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "23", "-pix_fmt", "yuv420p", "-profile:v", "high", "-c:a", "aac", "-b:a", "128k",
                "-movflags", "+faststart", str(ctx.job_dir / "web.mp4")], duration=duration)
    return {"preset": ctx.args["preset"], "video_file": _link(ctx, "web.mp4")}


_PTS_TIME_RE = re.compile(r"pts_time:([0-9.]+)")
_SCORE_RE = re.compile(r"lavfi\.scene_score=([0-9.]+)")


def run_motion(ctx) -> dict[str, Any]:
    threshold, gap = ctx.args["threshold"], ctx.args["gap"]
    duration = _duration(ctx)
    ctx.ffmpeg(["-i", str(_input(ctx)), "-an", "-vf",
                f"select='gt(scene,{threshold})',metadata=print:file=scenes.txt", "-f", "null", "-"],
               duration=duration, cwd=ctx.job_dir)
    events = []
    time_s = None
    for line in (ctx.job_dir / "scenes.txt").read_text().splitlines():
        if m := _PTS_TIME_RE.search(line):
            time_s = float(m.group(1))
        elif (m := _SCORE_RE.search(line)) and time_s is not None:
            events.append({"time": round(time_s, 3), "score": round(float(m.group(1)), 4)})
            time_s = None
    intervals: list[dict[str, float]] = []
    for ev in events:
        end = min(duration, ev["time"] + gap)
        if intervals and ev["time"] <= intervals[-1]["end"]:
            intervals[-1]["end"] = max(intervals[-1]["end"], end)
        else:
            intervals.append({"start": ev["time"], "end": round(end, 3)})
    return {"threshold": threshold, "intervals": intervals, "events": events[:10000], "duration": duration}


def _check_clip(args: dict[str, Any]) -> None:
    if ("end" in args) == ("duration" in args):
        raise BadRequest("analysis 'clip' needs exactly one of 'end' or 'duration'")
    if "end" in args and args["end"] <= args["start"]:
        raise BadRequest("argument 'end' must be greater than 'start'")


ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    Analysis("dummy", "Idles for `seconds` (reports progress); for testing clients. `dummy_N` (the contract's "
             "name) is `dummy` with `seconds` = N.",
             {"result": "{slept: seconds}"}, run_dummy,
             (Arg("seconds", "number", "how long to idle", 1.0, minimum=0, maximum=86400),)),
    Analysis("probe", "ffprobe facts: duration, container, streams, codecs, resolution, frame rate, bitrate.",
             {"result": "{duration, container, size, bitrate, video_codec, width, height, frame_rate, streams[]}"},
             run_probe),
    Analysis("thumbnails", "A JPEG every `every` seconds, `width` pixels wide, plus one sprite sheet (10 per row).",
             {"thumbnails": "[{time, url}]", "sprite": "url", "columns": "int", "rows": "int", "width": "int"},
             run_thumbnails,
             (Arg("every", "number", "seconds between thumbnails", 10.0, minimum=0, exclusive_minimum=True),
              Arg("width", "integer", "thumbnail width in pixels", 320, minimum=16, maximum=3840))),
    Analysis("clip", "An mp4 of [start, end) or [start, start+duration). Stream copy (cuts at keyframes) unless "
             "`accurate` re-encodes for frame-exact cuts.",
             {"video_file": "url", "start": "seconds", "duration": "seconds", "accurate": "bool"}, run_clip,
             (Arg("start", "number", "start, seconds", minimum=0),
              Arg("end", "number", "end, seconds (or give duration)", None, minimum=0),
              Arg("duration", "number", "length, seconds (or give end)", None, minimum=0, exclusive_minimum=True),
              Arg("accurate", "boolean", "re-encode for frame-exact cuts", False)),
             _check_clip),
    Analysis("split", "Several clips from one ffmpeg pass.",
             {"clips": "[{start, duration, video_file}]", "accurate": "bool"}, run_split,
             (Arg("segments", "segments", "[{start, duration}, …] in seconds, 1 to 100 of them"),
              Arg("accurate", "boolean", "re-encode for frame-exact cuts", False))),
    Analysis("transcode", "H.264/AAC mp4 with faststart, playable in browsers.",
             {"video_file": "url", "preset": "string"}, run_transcode,
             (Arg("preset", "string", "output preset", "web", choices=("web",)),)),
    Analysis("motion", "Time intervals with motion, from ffmpeg's scene-change score.",
             {"intervals": "[{start, end}]", "events": "[{time, score}]", "threshold": "number",
              "duration": "seconds"}, run_motion,
             (Arg("threshold", "number", "scene-change score (0..1) that counts as motion", 0.1,
                  minimum=0, maximum=1, exclusive_minimum=True),
              Arg("gap", "number", "seconds an event extends its interval (joins nearby events)", 1.0,
                  minimum=0, maximum=3600))),
)}


def get(name: Any) -> Analysis:
    if not isinstance(name, str) or name not in ANALYSES:
        raise BadRequest(f"unknown analysis {name!r}; allowed: {', '.join(sorted(ANALYSES))}, dummy_N")
    return ANALYSES[name]


_DUMMY_N_RE = re.compile(r"^dummy_(\d{1,5}(?:\.\d+)?)$")


def request_schema() -> dict[str, Any]:
    """The body of POST /analyse; each analysis' ``args`` is ``ANALYSES[name].args_schema()``."""
    names = sorted(ANALYSES)
    return object_schema({
        "file_id": OBJECT_ID_SCHEMA,
        "analysis": {"type": "string", "description": f"one of {', '.join(names)}, or dummy_N (idles N seconds)",
                     "pattern": "^(?:" + "|".join(map(re.escape, names)) + "|" + _DUMMY_N_RE.pattern[1:-1] + ")$"},
        "args": {"type": "object", "description": "the analysis' arguments (schemas: AnalysisArgs.<name>)"},
        "retry": {"type": "boolean", "description": "re-run a failed or interrupted analysis"},
    }, ("file_id", "analysis"), closed=False)


def resolve(name: Any, args: Any) -> tuple[Analysis, dict[str, Any]]:
    """The analysis and its validated args.

    The upload contract names ``dummy_N`` ("idles for N seconds"): it is
    ``dummy`` with ``seconds = N``, so both spellings name the same job.
    """
    m = _DUMMY_N_RE.match(name) if isinstance(name, str) else None
    if m:
        if args is not None and not isinstance(args, dict):
            raise BadRequest("args must be a JSON object")
        seconds = float(m.group(1))
        given = (args or {}).get("seconds")
        if given is not None and given != seconds:
            raise BadRequest(f"analysis {name!r} idles for {seconds:g} s; argument 'seconds' says {given!r}")
        args = {**(args or {}), "seconds": seconds}
        name = "dummy"
    analysis = get(name)
    return analysis, validate(analysis, args)
