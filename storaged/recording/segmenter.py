"""The segmenter: one detached ffmpeg that records a stream URL into MPEG-TS segments.

Protocol
--------
*Identity.*  The running segmenter of a stream is named by
``<stream dir>/inrun.pid`` (pid + boot id + process start time, plus the
run number), written atomically right after the spawn and removed once the
process is gone.  The process runs in its own session, so a daemon restart
(even SIGKILL) does not end it; the next daemon adopts it by that identity,
never by the pid alone.

*Output.*  ffmpeg itself writes the segments (under temp names) and the
run's list; the daemon gives finished segments their final names (see
storaged.recording.index); stderr goes to ``<stream dir>/ffmpeg.log`` (a pipe
would break when the daemon that read it is gone).

*Stopping.*  A process we spawned gets ``q`` on its stdin; an adopted one
(its stdin is not ours) gets SIGINT, which makes ffmpeg finish just as
cleanly.  Then SIGTERM, then SIGKILL, each after a timeout.  A clean finish
closes the current segment and appends its list line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from storaged.errors import BadRequest
from storaged.supervise.ffmpeg import FFMPEG
from storaged.supervise.process import ProcessIdentity, poll_gone, stop_sequence
from storaged.recording.index import list_name, run_dir_name, segment_pattern
from storaged.store.atomic import read_json, unlink_quiet, write_json

SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp", "file")
PIDFILE = "inrun.pid"
LOG_NAME = "ffmpeg.log"
LOG_MAX = 1024 * 1024


MAX_URL_CHARS = 4096
URL_SCHEMA = {"type": "string", "maxLength": MAX_URL_CHARS,
              "description": f"a stream URL ffmpeg can record from ({', '.join(SCHEMES)}), no spaces"}


def check_url(url: str) -> str:
    """A URL the segmenter can hand to ffmpeg, or BadRequest saying why not."""
    url = url.strip()
    allowed = ", ".join(SCHEMES)
    if any(ord(ch) < 32 or ch == " " for ch in url) or len(url) > MAX_URL_CHARS:
        raise BadRequest(f"url must be a stream URL without spaces or control characters "
                         f"(schemes: {allowed})")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BadRequest(f"url scheme {parts.scheme + ':' if parts.scheme else '(none)'} is not one ffmpeg "
                         f"can record from; use one of: {allowed}")
    if scheme == "file":
        if not parts.path:
            raise BadRequest("a file: url needs a path, e.g. file:///srv/video/camera.ts")
    elif not parts.hostname:
        raise BadRequest(f"url needs a host, e.g. {scheme}://192.168.1.10:554/stream")
    return url


def input_args(url: str, io_timeout: float) -> list[str]:
    """Per-scheme input options: a dead source must end ffmpeg, not hang it."""
    scheme = urlsplit(url).scheme.lower()
    us = str(int(io_timeout * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        return ["-rtsp_transport", "tcp", "-timeout", us]
    if scheme in ("udp", "srt"):
        return ["-timeout", us]
    if scheme in ("http", "https", "rtmp", "rtmps", "tcp"):
        return ["-rw_timeout", us]
    if scheme == "file":
        # A file is replayed at its own pace, like a live source.
        return ["-re"]
    return []  # rtp: no read timeout; the watchdog catches a silent source


def build_argv(url: str, run: int, segment_time: float, io_timeout: float, seg_dir: Path) -> list[str]:
    return [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostats",
        *input_args(url, io_timeout),
        "-analyzeduration", "2000000",
        "-i", url,
        "-map", "0:v?", "-map", "0:a?", "-c", "copy",
        "-f", "segment", "-segment_format", "mpegts",
        "-segment_time", f"{segment_time:g}", "-segment_atclocktime", "1",
        "-reset_timestamps", "1",
        "-segment_list", str(seg_dir / list_name(run)), "-segment_list_type", "csv",
        str(seg_dir / run_dir_name(run) / segment_pattern(run)),
    ]


class Segmenter:
    """Handle on one segmenter process: spawned by us (``popen``) or adopted (identity only)."""

    def __init__(self, run: int, identity: ProcessIdentity, popen: subprocess.Popen | None,
                 stream_dir: Path) -> None:
        self.run = run
        self.identity = identity
        self.popen = popen
        self.stream_dir = stream_dir

    @property
    def adopted(self) -> bool:
        return self.popen is None

    @classmethod
    def spawn_blocking(cls, stream_dir: Path, url: str, run: int, segment_time: float,
                       io_timeout: float) -> "Segmenter":
        seg_dir = stream_dir / "segments"
        (seg_dir / run_dir_name(run)).mkdir(parents=True, exist_ok=True)
        log_path = stream_dir / LOG_NAME
        try:
            if log_path.stat().st_size > LOG_MAX:
                log_path.unlink()
        except FileNotFoundError:
            pass
        argv = build_argv(url, run, segment_time, io_timeout, seg_dir)
        with open(log_path, "ab") as log:
            log.write(f"--- run {run}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                cwd=seg_dir, start_new_session=True, close_fds=True)
        identity = ProcessIdentity.of(popen.pid)
        if identity is None:  # died at once; keep a placeholder identity for bookkeeping
            identity = ProcessIdentity(pid=popen.pid, boot_id="", start_ticks=-1)
        write_json(stream_dir / PIDFILE, {**identity.to_json(), "run": run})
        return cls(run, identity, popen, stream_dir)

    @classmethod
    def adopt_blocking(cls, stream_dir: Path) -> tuple["Segmenter | None", int | None]:
        """The live segmenter named by the pid file, or (None, run of a dead one)."""
        try:
            data = read_json(stream_dir / PIDFILE)
        except (FileNotFoundError, ValueError):
            return None, None
        identity = ProcessIdentity.from_json(data)
        run = data.get("run") if isinstance(data, dict) else None
        if identity is None or not isinstance(run, int):
            return None, None
        if identity.alive():
            return cls(run, identity, None, stream_dir), run
        return None, run

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.identity.alive()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def release(self) -> None:
        """Let go of a process that keeps running (the daemon is going away): it becomes adoptable only.

        Our end of its stdin is closed (ffmpeg ignores end-of-file there) and the
        Popen is told not to expect to reap it, so it does not warn about a
        child still running.
        """
        if self.popen is None:
            return
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        if self.popen.poll() is None:
            self.popen.returncode = -1  # not ours to wait for any more
        self.popen = None

    def forget_blocking(self) -> None:
        """Drop the pid file once the process is gone."""
        unlink_quiet(self.stream_dir / PIDFILE)
        if self.popen is not None and self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def _signal(self, sig: int) -> None:
        if self.popen is not None:
            if self.popen.poll() is None:
                try:
                    self.popen.send_signal(sig)
                except ProcessLookupError:
                    pass
        elif self.identity.alive():
            try:
                os.kill(self.identity.pid, sig)
            except ProcessLookupError:
                pass

    def _quit(self) -> None:
        if self.popen is not None and self.popen.stdin is not None:
            try:
                self.popen.stdin.write(b"q")
                self.popen.stdin.flush()
                return
            except (BrokenPipeError, OSError, ValueError):
                pass
        self._signal(signal.SIGINT)

    async def wait(self, timeout: float, interval: float = 0.05) -> bool:
        return await poll_gone(self.alive, timeout, interval)

    async def stop(self, timeout: float = 5.0) -> bool:
        """q (or SIGINT), TERM, KILL (the one stop sequence, see storaged.supervise); True once gone."""
        if self.alive():
            await stop_sequence([(self._quit, timeout), (lambda: self._signal(signal.SIGTERM), timeout),
                                 (lambda: self._signal(signal.SIGKILL), timeout)], self.wait)
        gone = not self.alive()
        if gone:
            await asyncio.to_thread(self.forget_blocking)
        return gone
