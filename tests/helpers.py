"""Shared test helpers: real daemons, real ffmpeg media, polling instead of sleeping."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
                    what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dead_process():
    """The identity (storaged.supervise.process.ProcessIdentity) of a process that has exited."""
    from storaged.supervise.process import ProcessIdentity
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        return ProcessIdentity.of(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def gate_dir_fsyncs(monkeypatch, first_fails: bool = False) -> tuple[list[int], asyncio.Event]:
    """Replace storaged.store.atomic.fsync_dir with one whose first call waits for the returned event (and
    then raises EIO when ``first_fails``); the list counts the calls.  Call it on the event loop."""
    import errno
    from storaged.store import atomic
    calls: list[int] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def fsync_dir(path):
        calls.append(len(calls))
        if len(calls) == 1:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            if first_fails:
                raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic, "fsync_dir", fsync_dir)
    return calls, gate


def queue_entry(data_dir: Path, job_dir: Path) -> Path:
    """A job queue entry naming ``job_dir``, as the job runner writes one on submit."""
    entry = Path(data_dir) / "jobs" / "queue" / f"{time.time_ns():020d}-test.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(json.dumps({"job_dir": os.path.relpath(job_dir, data_dir)}))
    return entry


def ffmpeg(*args: str, timeout: float = 120) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=timeout, stdin=subprocess.DEVNULL)


def make_video(path: Path, seconds: float = 10, fps: int = 25, gop: int = 25,
               size: str = "160x120", audio: bool = True) -> Path:
    """An H.264 (+AAC) mp4 from lavfi test sources, keyframe every ``gop`` frames."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
             "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    args += ["-movflags", "+faststart", str(path)]
    ffmpeg(*args)
    return path


def plant_camera_images(data: Path, camera: str, first: str, count: int = 10) -> list[Path]:
    """``count`` motion images (160x120 JPEGs, one a minute from ``first`` = YYYYMMDD-HHMMSS, box time)
    where the camera family keeps them, as a capture (or another program) writes them."""
    start = datetime.strptime(first, "%Y%m%d-%H%M%S")
    day = Path(data) / "camera" / str(camera) / start.strftime("%Y%m%d")
    day.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=1", "-frames:v", str(count), str(day / "new%03d.jpg"))
    out = []
    for n in range(1, count + 1):
        when = start + timedelta(minutes=n - 1)
        out.append((day / f"new{n:03d}.jpg").rename(day / f"{when:%Y%m%d-%H%M%S}-000.jpg"))
    return out


def ffprobe(path: Path | str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                          "-show_streams", str(path)], check=True, capture_output=True, timeout=60)
    return json.loads(out.stdout)


def duration_of(path: Path | str) -> float:
    return float(ffprobe(path)["format"]["duration"])


class Daemon:
    """``storaged serve`` as a real process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra: str, env: dict | None = None, prefix: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.extra = list(extra)
        self.prefix = list(prefix)  # e.g. a sandbox the daemon runs inside
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"daemon-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "Daemon":
        env = {**os.environ, **self.env}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "storaged", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--no-access-log", *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            wait_until_sync(self._healthy, timeout=timeout, what="daemon /healthz")
        except AssertionError as exc:
            hung = self.proc.poll() is None
            self.kill()  # never leave a daemon behind a failed start
            if not hung:
                raise  # it exited: _healthy's message carries its log
            # A daemon that never answered: what it logged is the only clue to where it stood.
            raise AssertionError(f"{exc}; its log ({self.log_path}) ends:\n{self._log_tail()}") from None
        except BaseException:
            self.kill()
            raise
        return self

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError as exc:
            return f"(unreadable: {exc})"

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self._log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return s.recv(64).split(b" ")[1:2] == [b"200"]
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode if self.proc else 0

    def restart(self) -> "Daemon":
        self.kill()
        return self.start()


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    return await resp.json(content_type=None)
