"""Motion capture: one supervised ffmpeg per camera that saves a JPEG when the picture changes.

Protocol
--------
*What runs.*  For each enabled camera one ffmpeg reads the source and passes
its frames through ``select`` (at most ``fps`` frames a second) and a change
detector, then writes the surviving frames as MJPEG to its stdout
(``-f image2pipe``).  The supervisor splits that byte stream into JPEGs and
names each one by the wall clock when it arrives, in the box's time zone, to
the millisecond.  Why a pipe and the wall clock: a live source's timestamps
are relative to when the stream started (RTSP, UDP) or wrap (MPEG-TS), and
``-frame_pts``/``-strftime`` give frame numbers or whole seconds; the arrival
time is the real capture time within the encoder's latency (a few ms at these
sizes), needs no clock mapping, and the supervisor controls the file write.

*Change detector.*  ``detect=blocks`` (default) is ffmpeg's ``mpdecimate``:
a frame is kept when some 8x8 block differs from the last *kept* frame by a
mean absolute difference above ``threshold`` (0..1 of full scale), so slow
motion accumulates until it counts and still scenes produce nothing.
``detect=scene`` is ``select='gt(scene,T)'``; ffmpeg's scene score is
min(frame difference, change of the frame difference), which is built for
cuts: an object moving at a steady speed scores near zero, so it is only for
sources where a change means a cut-like jump.

*Writes.*  Each image is written as a temp file in its day folder (a
dot-name that no reader takes for an image), fsynced and renamed to
``<data>/camera/<n>/<YYYYMMDD>/<YYYYMMDD-HHMMSS-mmm>.jpg``.  Names are kept
strictly increasing per camera (a clash within one millisecond moves the name
on by 1 ms), so an image is never overwritten.  A crash leaves whole images
and at most a stray temp file.

*Supervision.*  An ffmpeg that exits (source gone, end of a file, error) is
restarted after 1 s, 2 s, 4 s ... up to ``camera_backoff_max``; the wait
resets once a run has produced an image or lasted longer than that maximum.
Each camera's loop is one tracked task; stopping sends ``q``, then TERM
(twice: see :func:`stop_capture`), then KILL.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from storaged.camera import images
from storaged.store.atomic import write_bytes
from storaged.supervise import ffmpeg as ff
from storaged.supervise.backoff import Backoff

log = logging.getLogger("storaged.camera")

DETECTORS = ("blocks", "scene")


@dataclass(frozen=True)
class CameraSpec:
    number: int
    url: str
    threshold: float
    fps: float
    detect: str = "blocks"
    realtime: bool = False   # -re: read a file source at its native rate
    timeout: float = 15.0    # network read timeout (s)
    enabled: bool = True


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    low = str(raw).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _spec(number: Any, opts: dict[str, Any], threshold: float, fps: float) -> CameraSpec:
    try:
        n = int(number)
    except (TypeError, ValueError):
        raise ValueError(f"camera number must be an integer, not {number!r}") from None
    if not 0 < n <= images.MAX_CAMERA:
        raise ValueError(f"camera number out of range: {n}")
    url = str(opts.get("url", "")).strip()
    if not url:
        raise ValueError(f"camera {n}: no source URL")
    unknown = set(opts) - {"url", "threshold", "fps", "detect", "re", "timeout", "enabled"}
    if unknown:
        raise ValueError(f"camera {n}: unknown option(s) {', '.join(sorted(unknown))}")
    spec = CameraSpec(
        number=n, url=url,
        threshold=float(opts.get("threshold", threshold)),
        fps=float(opts.get("fps", fps)),
        detect=str(opts.get("detect", "blocks")),
        realtime=_bool(opts.get("re", False)),
        timeout=float(opts.get("timeout", 15.0)),
        enabled=_bool(opts.get("enabled", True)),
    )
    if not 0 < spec.threshold <= 1:
        raise ValueError(f"camera {n}: threshold must be in (0, 1]")
    if not 0 < spec.fps <= 120:
        raise ValueError(f"camera {n}: fps must be in (0, 120]")
    if spec.detect not in DETECTORS:
        raise ValueError(f"camera {n}: detect must be one of {', '.join(DETECTORS)}")
    return spec


def parse_cameras(raw: str, threshold: float, fps: float) -> dict[int, CameraSpec]:
    """The ``cameras`` setting: ``N=URL|key=value;...`` or a JSON object ``{"N": {...} | "URL"}``."""
    raw = (raw or "").strip()
    out: dict[int, CameraSpec] = {}
    if not raw:
        return out
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"cameras: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("cameras: the JSON must be an object")
        for number, value in data.items():
            opts = {"url": value} if isinstance(value, str) else value
            if not isinstance(opts, dict):
                raise ValueError(f"camera {number}: expected a URL or an object")
            spec = _spec(number, opts, threshold, fps)
            out[spec.number] = spec
        return out
    for item in raw.split(";"):
        item = item.strip()
        if not item:
            continue
        number, eq, rest = item.partition("=")
        if not eq:
            raise ValueError(f"cameras: expected N=URL, got {item!r}")
        url, *pairs = rest.split("|")
        opts: dict[str, Any] = {"url": url}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"camera {number}: expected key=value, got {pair!r}")
            opts[key.strip()] = value.strip()
        spec = _spec(number.strip(), opts, threshold, fps)
        if spec.number in out:
            raise ValueError(f"camera {spec.number} is configured twice")
        out[spec.number] = spec
    return out


def filter_chain(spec: CameraSpec) -> str:
    # A hair under 1/fps, so a 25 fps source sampled at 5 fps does not skip
    # every other slot on float rounding.
    interval = max(0.0, 1.0 / spec.fps - 0.001)
    rate = f"select='isnan(prev_selected_t)+gte(t-prev_selected_t,{interval:.4f})'"
    if spec.detect == "scene":
        return f"select='gt(scene,{spec.threshold})',{rate}"
    hi = max(1, round(spec.threshold * 255 * 64))
    lo = max(1, hi * 5 // 12)
    # Rate first: the detector then compares samples 1/fps apart, so slow
    # motion adds up between samples instead of slipping under the threshold.
    return f"{rate},mpdecimate=hi={hi}:lo={lo}:frac=0.33"


def ffmpeg_argv(spec: CameraSpec) -> list[str]:
    # No -nostdin: stdin is how the supervisor says "q".
    argv = [ff.FFMPEG, "-hide_banner", "-loglevel", "error"]
    url = spec.url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if spec.realtime:
        argv.append("-re")
    # Images are named when they arrive, so frames must not sit in ffmpeg's
    # input probing (5 s by default): start deciding after about 1 s.
    argv += ["-analyzeduration", "1000000", "-probesize", "1000000"]
    timeout_us = str(int(spec.timeout * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        argv += ["-rtsp_transport", "tcp", "-timeout", timeout_us]
    elif scheme == "udp":
        argv += ["-timeout", timeout_us]  # udp ignores -rw_timeout; its own option ends a silent source
    elif scheme and scheme != "file":
        argv += ["-rw_timeout", timeout_us]
    argv += ["-i", url, "-an", "-sn", "-dn", "-vf", filter_chain(spec), "-fps_mode", "vfr",
             "-c:v", "mjpeg", "-q:v", "3", "-flush_packets", "1", "-f", "image2pipe", "pipe:1"]
    return argv


class JpegSplitter:
    """Cuts a concatenation of JPEGs (ffmpeg's image2pipe) into whole images.

    Walks the marker segments by their lengths up to the scan, then scans the
    entropy-coded data for the next marker (a 0xFF not followed by 0x00 or a
    restart marker), so bytes inside tables can never end an image early.
    """

    def __init__(self, max_size: int = 64 * 1024 * 1024) -> None:
        self.buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while True:
            start = self.buf.find(b"\xff\xd8")
            if start < 0:
                del self.buf[:max(0, len(self.buf) - 1)]
                return out
            if start:
                del self.buf[:start]
            end = self._end()
            if end is None:
                if len(self.buf) > self.max_size:
                    del self.buf[:2]  # not a JPEG we can finish: resynchronise
                    continue
                return out
            out.append(bytes(self.buf[:end]))
            del self.buf[:end]

    def _end(self) -> int | None:
        buf = self.buf
        n = len(buf)
        i = 2
        while True:
            if i + 1 >= n:
                return None
            if buf[i] != 0xFF:
                return i  # corrupt: cut here, the splitter resynchronises on the next SOI
            marker = buf[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker == 0xD9:
                return i + 2
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:
                i += 2
                continue
            if i + 3 >= n:
                return None
            length = (buf[i + 2] << 8) | buf[i + 3]
            i += 2 + length
            if marker != 0xDA:
                continue
            while True:  # entropy-coded data up to the next real marker
                j = buf.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return None
                nxt = buf[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    i = j + 1 if nxt == 0xFF else j + 2
                    continue
                i = j
                break


class CameraSupervisor:
    def __init__(self, spec: CameraSpec, cam_dir: Path, tz: ZoneInfo, *, backoff_max: float = 30.0,
                 stop_timeout: float = 5.0) -> None:
        self.spec = spec
        self.cam_dir = cam_dir
        self.tz = tz
        self.backoff_max = max(1.0, backoff_max)
        self.stop_timeout = stop_timeout
        self.task: asyncio.Task | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.images_saved = 0
        self.restarts = 0
        self.last_motion: datetime | None = None
        self.last_image: str | None = None
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._last_stamp: datetime | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"camera-{self.spec.number}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    def status(self) -> dict[str, Any]:
        s = self.spec
        return {
            "camera": s.number, "enabled": s.enabled, "running": self.running, "source": ff.redact(s.url),
            "pid": self.proc.pid if self.running else None,
            "threshold": s.threshold, "fps": s.fps, "detect": s.detect,
            "imagesSaved": self.images_saved, "lastImage": self.last_image,
            "lastMotion": self._iso(self.last_motion), "restarts": self.restarts, "lastError": self.last_error,
        }

    def _iso(self, when: datetime | None) -> str | None:
        return when.replace(tzinfo=self.tz).isoformat(timespec="milliseconds") if when else None

    async def _loop(self) -> None:
        backoff = Backoff(1.0, self.backoff_max, jitter=0)
        first = True
        while True:
            if not first:
                self.restarts += 1
            first = False
            began = time.monotonic()
            saved_before = self.images_saved
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep supervising whatever one run did
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("camera %d: capture run failed", self.spec.number)
            delay = backoff.restart_delay(did_work=self.images_saved > saved_before,
                                          ran_for=time.monotonic() - began)
            log.warning("camera %d: ffmpeg ended (%s); restarting in %.0f s", self.spec.number,
                        self.last_error, delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> None:
        argv = ffmpeg_argv(self.spec)
        self.proc = proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        self.started_at = time.time()
        tail: collections.deque[str] = collections.deque(maxlen=ff.STDERR_TAIL_LINES)
        stderr_task = asyncio.create_task(ff.drain_lines(proc.stderr, tail), name=f"camera-{self.spec.number}-stderr")
        splitter = JpegSplitter()
        first_in_run = True
        try:
            while True:
                chunk = await proc.stdout.read(256 * 1024)
                if not chunk:
                    break
                for jpeg in splitter.feed(chunk):
                    await self._save(jpeg, motion=not first_in_run)
                    first_in_run = False
            code = await proc.wait()
        except BaseException:
            await stop_capture(proc, self.stop_timeout)
            stderr_task.cancel()
            await asyncio.gather(stderr_task, return_exceptions=True)
            raise
        await asyncio.gather(stderr_task, return_exceptions=True)
        last = tail[-1] if tail else ""
        self.last_error = f"ffmpeg exited with status {code}" + (f": {last}" if last else "")

    def _stamp(self) -> datetime:
        now = datetime.now(self.tz).replace(tzinfo=None)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now
        return now

    async def _save(self, jpeg: bytes, motion: bool) -> None:
        while True:
            when = self._stamp()
            path = self.cam_dir / images.day_folder(when) / images.image_name(when)
            if await asyncio.to_thread(_write_image, path, jpeg):
                break
        self.images_saved += 1
        self.last_image = path.name
        if motion:
            # The first image of a run is the baseline picture, not a change.
            self.last_motion = when


async def stop_capture(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int:
    """``q``, then TERM, then TERM again, then KILL (the one stop sequence, see storaged.supervise).

    ffmpeg only checks ``q`` and its first TERM between packets; while it
    waits for a silent source only a second signal interrupts the read.
    image2pipe has no trailer to lose, so the polite waits are short.
    """
    return await ff.stop_process(proc, timeout, extra_term=True, first_wait=min(1.0, timeout))


def _write_image(path: Path, data: bytes) -> bool:
    """Publish the image under ``path`` unless that name exists (another writer used this millisecond:
    an image is never overwritten); False then, and the caller takes the next millisecond."""
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return write_bytes(path, data, exclusive=True)
        except FileNotFoundError:
            if attempt == 2:
                raise
            # A cleanup removed the (empty) day folder between mkdir and write: make it again.
    return False


class MotionService:
    """Supervisors of every configured camera."""

    def __init__(self, specs: dict[int, CameraSpec], camera_root: Path, tz: ZoneInfo, *,
                 backoff_max: float = 30.0, stop_timeout: float = 5.0) -> None:
        self.specs = specs
        self.camera_root = camera_root
        self.supervisors = {
            n: CameraSupervisor(spec, camera_root / str(n), tz, backoff_max=backoff_max, stop_timeout=stop_timeout)
            for n, spec in sorted(specs.items())
        }

    async def start(self) -> None:
        for sup in self.supervisors.values():
            if sup.spec.enabled:
                sup.start()

    async def close(self) -> None:
        await asyncio.gather(*(sup.stop() for sup in self.supervisors.values()))

    def status(self) -> dict[str, Any]:
        return {"cameras": [sup.status() for sup in self.supervisors.values()]}

    def active_cameras(self) -> int:
        """Cameras whose motion ffmpeg runs right now (for /metrics)."""
        return sum(1 for sup in list(self.supervisors.values()) if sup.running)

    def restarts(self) -> int:
        """Restarts of every camera's ffmpeg since the daemon started."""
        return sum(sup.restarts for sup in list(self.supervisors.values()))
