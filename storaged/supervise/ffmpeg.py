"""Running ffmpeg and ffprobe.

Rules every caller gets for free here: argv lists only (never a shell);
stderr is always drained (a full pipe would stall ffmpeg) and its last lines
kept for error messages; progress comes from ``-progress pipe:1``; stopping is
``q`` on stdin, then SIGTERM, then SIGKILL, each after a timeout, so that
muxers get the chance to write their trailers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from storaged.errors import StoragedError
from storaged.supervise.process import stop_sequence

log = logging.getLogger("storaged.ffmpeg")

FFMPEG = os.environ.get("STORAGED_FFMPEG_BIN", "ffmpeg")
FFPROBE = os.environ.get("STORAGED_FFPROBE_BIN", "ffprobe")
STDERR_TAIL_LINES = 20
MIN_VERSION = (5, 1)  # Debian 12's; older segment/concat muxers lack options the recorder and clips use
_VERSION_RE = re.compile(r"\bversion\s+n?(\d+)\.(\d+)")


def check_tools(timeout: float = 20.0) -> list[str]:
    """Check that ffmpeg and ffprobe run and are at least MIN_VERSION; answer their version lines.

    Raises RuntimeError with one line naming the problem.  Blocking (start-up only).  A
    version string without a release number (a git build, ``N-…``) is taken as new enough.
    Both run at once: each is a dynamically linked program whose start is a good part of a
    second on a loaded box, and the daemon answers nothing until both have."""
    need = ".".join(map(str, MIN_VERSION))
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        for binary in (FFMPEG, FFPROBE):
            try:
                procs.append((binary, subprocess.Popen([binary, "-version"], stdout=subprocess.PIPE,
                                                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)))
            except FileNotFoundError:
                raise RuntimeError(f"{binary} not found: install ffmpeg >= {need} (Debian: apt-get install ffmpeg)") from None
            except OSError as exc:
                raise RuntimeError(f"{binary} -version failed: {exc}") from None
        deadline = time.monotonic() + timeout
        lines = []
        for binary, proc in procs:
            try:
                out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{binary} -version failed: {exc}") from None
            first = (out.decode("utf-8", "replace").splitlines() or [""])[0].strip()
            if proc.returncode != 0:
                raise RuntimeError(f"{binary} -version exited with {proc.returncode}: {first or 'no output'}")
            m = _VERSION_RE.search(first)
            if m and (int(m.group(1)), int(m.group(2))) < MIN_VERSION:
                raise RuntimeError(f"{binary} {m.group(1)}.{m.group(2)} is too old: storaged needs ffmpeg >= {need} "
                                   f"({first})")
            lines.append(first)
        return lines
    finally:
        for _binary, proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


class FFmpegError(StoragedError):
    """ffmpeg or ffprobe failed; ``stderr`` holds its last lines."""

    status = 500

    def __init__(self, message: str, stderr: Sequence[str] = (), returncode: int | None = None) -> None:
        super().__init__(message)
        self.stderr = list(stderr)
        self.returncode = returncode
        self.extra = {"stderr": self.stderr}


@dataclass
class Result:
    returncode: int
    stderr: list[str] = field(default_factory=list)


def redact(url: str) -> str:
    """A source URL without its password, for status pages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def base_args() -> list[str]:
    return [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]


async def drain_lines(stream: asyncio.StreamReader, keep: collections.deque, on_line=None) -> None:
    while True:
        line = await stream.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip()
        if on_line is not None:
            on_line(text)
        elif text:
            keep.append(text)


def concat_quote(path: Path) -> str:
    """A path quoted for an ffconcat ``file`` line."""
    return "'" + str(path).replace("'", "'\\''") + "'"


def waiter(proc: asyncio.subprocess.Process) -> Callable[[float], Awaitable[bool]]:
    """``gone(timeout)`` for :func:`storaged.supervise.process.stop_sequence` on our own child."""
    async def gone(timeout: float) -> bool:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
    return gone


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 5.0, *, send_q: bool = True,
                       extra_term: bool = False, first_wait: float | None = None) -> int:
    """End ffmpeg gracefully: ``q`` (when stdin is a pipe), then TERM, then KILL.

    ffmpeg checks ``q`` and its first TERM only between packets; while it waits
    on a silent source only a second TERM interrupts the read (``extra_term``).
    ``first_wait`` bounds the waits after the polite steps (default ``timeout``).
    """
    if proc.returncode is not None:
        return proc.returncode
    polite = timeout if first_wait is None else first_wait
    steps: list[tuple[Callable[[], object], float]] = []
    if send_q and proc.stdin is not None:
        steps.append((lambda: proc.stdin.write(b"q\n"), polite))
    steps.append((lambda: proc.send_signal(signal.SIGTERM), polite))
    if extra_term:
        steps.append((lambda: proc.send_signal(signal.SIGTERM), timeout))
    steps.append((proc.kill, timeout))
    await stop_sequence(steps, waiter(proc))
    return await proc.wait()


async def run(argv: Sequence[str], *, duration: float | None = None,
              on_progress: Callable[[float], None] | None = None,
              timeout: float | None = None, cwd: Path | None = None) -> Result:
    """Run ffmpeg to completion; raise FFmpegError on a non-zero exit.

    ``argv`` starts with the ffmpeg binary (see :func:`base_args`).  When
    ``on_progress`` is given, ``-progress pipe:1`` is added and the callback
    gets ``out_time / duration`` clamped to 0..1.
    """
    argv = list(argv)
    if on_progress is not None:
        argv[1:1] = ["-progress", "pipe:1", "-nostats"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def progress_line(line: str) -> None:
        key, _, value = line.partition("=")
        if key in ("out_time_us", "out_time_ms") and duration and on_progress is not None:
            try:
                seconds = int(value) / 1_000_000
            except ValueError:
                return
            on_progress(max(0.0, min(1.0, seconds / duration)))
        elif key == "progress" and value == "end" and on_progress is not None:
            on_progress(1.0)

    readers = asyncio.gather(drain_lines(proc.stdout, collections.deque(maxlen=1), progress_line),
                             drain_lines(proc.stderr, tail))
    try:
        await asyncio.wait_for(asyncio.shield(readers), timeout)
        code = await proc.wait()
    except BaseException:
        await stop_process(proc)
        readers.cancel()
        await asyncio.gather(readers, return_exceptions=True)
        raise
    if code != 0:
        raise FFmpegError(f"ffmpeg exited with status {code}", list(tail), code)
    return Result(code, list(tail))


async def probe(target: str | Path, timeout: float = 30.0) -> dict:
    """ffprobe's JSON (format + streams) for a file or URL."""
    argv = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(target)]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await stop_process(proc, send_q=False)
        raise FFmpegError(f"ffprobe timed out after {timeout}s") from None
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        raise FFmpegError("ffprobe could not read the input", lines, proc.returncode)
    return json.loads(out)


def probe_sync(target: str | Path, timeout: float = 30.0) -> dict:
    argv = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(target)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"ffprobe timed out after {timeout}s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        raise FFmpegError("ffprobe could not read the input", lines, done.returncode)
    return json.loads(done.stdout)


def duration_of(info: dict) -> float | None:
    """Duration in seconds from ffprobe JSON (format first, then the longest stream)."""
    raw = info.get("format", {}).get("duration")
    if raw not in (None, "N/A"):
        return float(raw)
    best = None
    for stream in info.get("streams", []):
        d = stream.get("duration")
        if d not in (None, "N/A"):
            best = max(best or 0.0, float(d))
    return best


def summarize(info: dict) -> dict:
    """The facts people ask about: duration, container, streams, codecs, resolution, fps, bitrate."""
    fmt = info.get("format", {})
    streams = []
    for s in info.get("streams", []):
        entry = {"index": s.get("index"), "type": s.get("codec_type"), "codec": s.get("codec_name")}
        if s.get("codec_type") == "video":
            entry.update(width=s.get("width"), height=s.get("height"),
                         frame_rate=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
                         pix_fmt=s.get("pix_fmt"))
        elif s.get("codec_type") == "audio":
            entry.update(sample_rate=_int(s.get("sample_rate")), channels=s.get("channels"))
        if s.get("bit_rate"):
            entry["bitrate"] = _int(s.get("bit_rate"))
        streams.append(entry)
    video = next((s for s in streams if s["type"] == "video"), None)
    return {
        "duration": duration_of(info),
        "container": fmt.get("format_name"),
        "size": _int(fmt.get("size")),
        "bitrate": _int(fmt.get("bit_rate")),
        "video_codec": video["codec"] if video else None,
        "width": video["width"] if video else None,
        "height": video["height"] if video else None,
        "frame_rate": video["frame_rate"] if video else None,
        "streams": streams,
    }


def _rate(raw: str | None) -> float | None:
    if not raw or raw in ("0/0", "N/A"):
        return None
    num, _, den = raw.partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return round(value, 3)


def _int(raw) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None
