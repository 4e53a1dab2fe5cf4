"""Benchmark: camera createVideo through HTTP vs the plain ffmpeg concat command.

* ``--images`` (default 10,000) JPEGs (``--size``, default 320x240) made by ONE ffmpeg
  command and renamed into camera 1's folders, 200 ms apart (so they span two days).
* storaged: a real ``storaged serve`` (``--job-concurrency 1``); ``POST
  /convert/createVideo`` for the whole range, then ``statusProcess`` every 50 ms until
  it is done: wall time from the request to "done".  Daemon RSS (VmRSS) before and
  after, and the peak RSS (VmHWM) of the worker while it ran.
* yardstick: the same ffconcat list (built beforehand, not timed) through the plain
  ``ffmpeg -f concat -safe 0 -i list … -c:v libx264`` command with the same encoder
  arguments the job uses.
* ``--rounds`` (default 2) alternating rounds; the figures are medians.  Goal: ≤ 1.2×
  the yardstick's wall time, daemon memory flat.

    .venv/bin/python bench/camera_video.py                  # full scale
    .venv/bin/python bench/camera_video.py --images 3000    # reduced scale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import Processes, disk_tempdir, machine_note, median, start_daemon, time_limit, write_section  # noqa: E402

from storaged.camera import images  # noqa: E402

SECTION = "camera"
FPS = 25
BASE = datetime(2024, 1, 1, 23, 30, 0)
STEP = timedelta(milliseconds=200)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def make_images(data: Path, count: int, size: str) -> tuple[str, str]:
    raw = data / "raw"
    raw.mkdir()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25", "-frames:v", str(count), "-q:v", "5",
                    str(raw / "%06d.jpg")], check=True, stdin=subprocess.DEVNULL)
    cam = data / "camera" / "1"
    for i, src in enumerate(sorted(raw.iterdir())):
        when = BASE + i * STEP
        day = cam / images.day_folder(when)
        day.mkdir(parents=True, exist_ok=True)
        os.rename(src, day / images.image_name(when))
    raw.rmdir()
    return images.key_of(BASE), images.key_of(BASE + (count - 1) * STEP)


def plain_list(data: Path, start: str, end: str, out: Path) -> int:
    lo, hi = images.range_bounds(datetime.strptime(start, "%Y%m%d-%H%M%S"), datetime.strptime(end, "%Y%m%d-%H%M%S"))
    n = 0
    with open(out, "w") as fh:
        fh.write("ffconcat version 1.0\n")
        for path in images.iter_range(data / "camera" / "1", lo, hi):
            fh.write(f"file '{path}'\nduration {1 / FPS:.6f}\n")
            n += 1
    return n


def plain_ffmpeg(list_path: Path, out: Path, size: str) -> float:
    w, h = size.split("x")
    t0 = time.perf_counter()
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(list_path), "-vf", f"scale={w}:{h},format=yuv420p", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-r", str(FPS),
                    "-movflags", "+faststart", "-f", "mp4", str(out)], check=True)
    return time.perf_counter() - t0


def through_http(url: str, start: str, end: str) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    out = post(url + "/convert/createVideo", {"camera": 1, "fps": FPS, "save": True, "start": start, "end": end,
                                              "skip": 0})
    peak = 0
    job = None
    while True:
        st = post(url + "/convert/statusProcess", {"id": out["id"]})
        if not st["running"]:
            break
        if job is None:
            job = out["id"]
        time.sleep(0.05)
        peak = max(peak, worker_peak(job))
    return time.perf_counter() - t0, peak, st


_WORKER_PIDS: dict[str, int] = {}


def worker_peak(job_id: str) -> int:
    pid = _WORKER_PIDS.get(job_id)
    if pid is None:
        pidfile = DATA / "camera" / "processes" / job_id / "inrun.pid"
        try:
            pid = json.loads(pidfile.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return 0
        _WORKER_PIDS[job_id] = pid
    return rss_kb(pid, "VmHWM")


DATA = Path()


def main() -> int:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=900)
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = ap.parse_args()
    procs = Processes()
    with time_limit(args.time_limit), disk_tempdir("camera-bench-") as tmp:
        try:
            DATA = data = tmp / "data"
            data.mkdir()
            t0 = time.perf_counter()
            start, end = make_images(data, args.images, args.size)
            gen = time.perf_counter() - t0
            list_path = tmp / "plain.ffconcat"
            n = plain_list(data, start, end, list_path)
            daemon, url = start_daemon(procs, data, tmp / "daemon.log", "--job-concurrency", "1",
                                       "--no-access-log", "--log-level", "WARNING")
            post(url + "/convert/listProcess", {})  # warm the route
            rss_before = rss_kb(daemon.pid)
            ours, plains, peaks = [], [], []
            for r in range(args.rounds):
                plains.append(plain_ffmpeg(list_path, tmp / f"plain{r}.mp4", args.size))
                took, peak, st = through_http(url, start, end)
                assert st["status"] == "done" and st["frames"] == n, st
                ours.append(took)
                peaks.append(peak)
                print(f"round {r + 1}: storaged {took:.2f} s, plain ffmpeg {plains[-1]:.2f} s, "
                      f"worker peak RSS {peak / 1024:.0f} MiB", flush=True)
            rss_after = rss_kb(daemon.pid)
        finally:
            procs.stop_all()
    ratio = median(ours) / median(plains)
    scale = "full scale" if args.images >= 10_000 else f"REDUCED scale ({args.images:,} images instead of 10,000)"
    cmd = "    .venv/bin/python bench/camera_video.py" + ("" if args.images == 10_000 else f" --images {args.images}")
    body = f"""createVideo of {n:,} JPEGs ({args.size}, {FPS} fps, libx264 veryfast) through HTTP (POST →
`statusProcess` polled every 50 ms until done) vs the plain `ffmpeg -f concat -safe 0 -i list … -c:v
libx264` command with the same encoder arguments on the same ffconcat list; {args.rounds} alternating
rounds, medians; {scale}. Generating the images (one ffmpeg command + renames) took {gen:.1f} s.

{cmd}

| | wall time (median) | rounds |
| --- | --- | --- |
| storaged createVideo (request → done) | {median(ours):.2f} s | {", ".join(f"{x:.2f}" for x in ours)} |
| plain ffmpeg concat | {median(plains):.2f} s | {", ".join(f"{x:.2f}" for x in plains)} |
| **ratio** | **{ratio:.2f}×** (goal ≤ 1.2×) | |

| memory | |
| --- | --- |
| daemon RSS before the first request | {rss_before / 1024:.1f} MiB |
| daemon RSS after {args.rounds} videos | {rss_after / 1024:.1f} MiB ({(rss_after - rss_before) / 1024:+.1f} MiB) |
| worker peak RSS (VmHWM of the Python worker; ffmpeg not included) | {max(peaks) / 1024:.1f} MiB |

Machine: {machine_note()}.
"""
    print(body)
    if args.write:
        write_section(SECTION, body)
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
