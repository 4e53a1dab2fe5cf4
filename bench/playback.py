"""Benchmark: playback of a range without cutting, vs the plain ffmpeg concat remux.

Builds 24 h of 10 s H.264 MPEG-TS segments (one generated hour, copied to fill
the day, each copy with its own name and close time) as stream 1's recording
in the segmenter's layout, starts a real ``storaged serve`` on loopback, and
measures:

* a 10-minute range from the middle of the day through ``/streams/1/play.mp4``:
  time to the first byte, and time until ``ffmpeg -i <url> -frames:v 1`` has
  decoded its first frame; the yardstick is ``ffmpeg -f concat -safe 0 -i
  <list of the same segments> -c copy -f mp4 -movflags frag_keyframe+empty_moov
  pipe:`` (first byte on its stdout; first frame decoded by a second ffmpeg
  reading that pipe).  Goal: ≤ 1.1× the yardstick.
* ``/streams/1/playlist.m3u8`` for the whole 24 h: p50 over HTTP, and p50 of
  the playlist generation itself (goal < 5 ms).
* CPU of 4 concurrent playbacks of a 10-minute range each (daemon + its ffmpeg
  children, from /proc), as seconds of CPU per playback.

    .venv/bin/python bench/playback.py [--rounds 9] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.common import Processes, disk_tempdir, machine_note, publish, start_daemon  # noqa: E402
from storaged.playback import service  # noqa: E402
from storaged.recording import index as idx  # noqa: E402

SEGMENT = 10
HOUR = 3600
DAY = 24 * HOUR
RANGE = 600


def build_day(data: Path, t0: float) -> Path:
    """24 h of 10 s segments of stream 1 (run 1), finished, each closed at its own wall-clock time."""
    seg_dir = data / "streams" / "1" / "segments"
    run_dir = seg_dir / idx.run_dir_name(1)
    run_dir.mkdir(parents=True)
    work = data.parent / "gen"
    work.mkdir()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=10:duration={HOUR}", "-map", "0",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
                    "-f", "segment", "-segment_time", str(SEGMENT), "-reset_timestamps", "1",
                    "-segment_format", "mpegts", "-segment_list", str(work / "list.csv"),
                    "-segment_list_type", "csv", str(work / "s%05d.ts")], check=True)
    hour = [line.split(",") for line in (work / "list.csv").read_text().splitlines()]
    lines = []
    seq = 0
    for copy in range(DAY // HOUR):
        for name, start, end in hour:
            rel_start, rel_end = float(start) + copy * HOUR, float(end) + copy * HOUR
            final = f"r000001-{seq:06d}.ts"
            shutil.copyfile(work / name, run_dir / final)
            os.utime(run_dir / final, (t0 + rel_end, t0 + rel_end))
            lines.append(f"{final},{rel_start:.6f},{rel_end:.6f}\n")
            seq += 1
    (seg_dir / idx.list_name(1)).write_text("".join(lines))
    shutil.rmtree(work)
    return seg_dir


def create_stream(base: str) -> None:
    req = urllib.request.Request(base + "/streams/create", data=b"url=udp://127.0.0.1:9", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def ttfb(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        resp.read(1)
        return time.perf_counter() - t


def first_frame_http(url: str) -> float:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", url, "-frames:v", "1", "-f", "null", "-"],
                   check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t


def yardstick_argv(listing: Path) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing),
            "-c", "copy", "-f", "mp4", "-movflags", "frag_keyframe+empty_moov", "pipe:"]


def yardstick_ttfb(listing: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.Popen(yardstick_argv(listing), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    proc.stdout.read(1)
    took = time.perf_counter() - t
    proc.kill()
    proc.wait()
    return took


def yardstick_first_frame(listing: Path) -> float:
    t = time.perf_counter()
    remux = subprocess.Popen(yardstick_argv(listing), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-frames:v", "1",
                    "-f", "null", "-"], stdin=remux.stdout, check=True)
    took = time.perf_counter() - t
    remux.kill()
    remux.wait()
    return took


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--write", action="store_true", help="write the figures into BENCHMARKS.md")
    args = ap.parse_args()
    procs = Processes()
    with disk_tempdir("playback-bench-") as tmp:
        try:
            data = tmp / "data"
            data.mkdir()
            t0 = float(int(time.time()) - 2 * DAY)
            began = time.monotonic()
            seg_dir = build_day(data, t0)
            print(f"built {DAY // SEGMENT} segments in {time.monotonic() - began:.0f}s", file=sys.stderr)
            daemon, base = start_daemon(procs, data, tmp / "daemon.log", "--no-access-log", "--log-level",
                                        "WARNING")
            create_stream(base)
            index = idx.StreamIndex(seg_dir)
            segments = index.segments()
            assert len(segments) == DAY // SEGMENT, len(segments)
            first = segments[0].start

            # 10-minute ranges from the middle of the day, not on segment boundaries
            ours_ttfb, ours_frame, yard_ttfb, yard_frame = [], [], [], []
            for i in range(args.rounds):
                a = first + 11 * HOUR + i * 1234.5 + 3.3
                url = f"{base}/streams/1/play.mp4?start={a:.3f}&end={a + RANGE:.3f}"
                script, _, _ = service.progressive_plan(index, segments, a, a + RANGE)
                listing = tmp / "yard.ffconcat"
                listing.write_text(script)
                ours_ttfb.append(ttfb(url))
                yard_ttfb.append(yardstick_ttfb(listing))
                ours_frame.append(first_frame_http(url))
                yard_frame.append(yardstick_first_frame(listing))

            # playlist of the whole day
            pl_url = f"{base}/streams/1/playlist.m3u8?start={first:.3f}&end={first + DAY:.3f}"
            http_pl, gen_pl = [], []
            for _ in range(max(20, args.rounds * 3)):
                t = time.perf_counter()
                with urllib.request.urlopen(pl_url, timeout=60) as resp:
                    body = resp.read()
                http_pl.append(time.perf_counter() - t)
                t = time.perf_counter()
                service.playlist(index.segments(), first, first + DAY, live=False)
                gen_pl.append(time.perf_counter() - t)
            assert body.count(b"#EXTINF") == DAY // SEGMENT

            # CPU of 4 concurrent playbacks of a 10-minute range
            before = cpu_of(daemon.pid)
            wall = time.perf_counter()
            sizes = []

            def play(k: int) -> None:
                a = first + 3 * HOUR + k * HOUR
                with urllib.request.urlopen(f"{base}/streams/1/play.mp4?start={a:.3f}&end={a + RANGE:.3f}",
                                            timeout=120) as resp:
                    sizes.append(len(resp.read()))
            threads = [threading.Thread(target=play, args=(k,)) for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - wall
            cpu = cpu_of(daemon.pid) - before
        finally:
            procs.stop_all()

    med = statistics.median
    r_ttfb = med(ours_ttfb) / med(yard_ttfb)
    r_frame = med(ours_frame) / med(yard_frame)
    gen_p50 = med(gen_pl) * 1000
    text = f"""Command: `.venv/bin/python bench/playback.py --rounds {args.rounds} --write`.
Load: 24 h of 10 s segments ({DAY // SEGMENT} H.264 MPEG-TS files, 160x120 at 10 fps, one keyframe a second)
as one recorded run; a real `storaged serve` on loopback; {args.rounds} different 10-minute ranges from the
middle of the day, not on segment boundaries. Yardstick: `ffmpeg -f concat -safe 0 -i <list> -c copy -f mp4
-movflags frag_keyframe+empty_moov pipe:` on the same segments with the same in/out points. {machine_note()}.

| what (median of {args.rounds}) | storaged `play.mp4` | plain ffmpeg concat | ratio |
| --- | --- | --- | --- |
| time to first byte | {med(ours_ttfb) * 1000:.0f} ms | {med(yard_ttfb) * 1000:.0f} ms | {r_ttfb:.2f}× |
| time to first decoded frame (`ffmpeg -i … -frames:v 1`) | {med(ours_frame) * 1000:.0f} ms | {med(yard_frame) * 1000:.0f} ms | {r_frame:.2f}× |

Goal ≤ 1.1×: first byte {'met' if r_ttfb <= 1.1 else 'not met'}, first frame {'met' if r_frame <= 1.1 else 'not met'}.

| playlist of the whole 24 h ({DAY // SEGMENT} segments) | p50 | p90 |
| --- | --- | --- |
| generation (`service.playlist`, index cached) | {gen_p50:.1f} ms | {sorted(gen_pl)[int(len(gen_pl) * 0.9)] * 1000:.1f} ms |
| `GET /streams/1/playlist.m3u8?start=&end=` over HTTP | {med(http_pl) * 1000:.1f} ms | {sorted(http_pl)[int(len(http_pl) * 0.9)] * 1000:.1f} ms |

Goal < 5 ms for generation: {'met' if gen_p50 < 5 else 'not met'}.

4 concurrent playbacks of a 10-minute range each ({sum(sizes) / 4 / 1e6:.1f} MB each), streamed as fast as
the clients read: {wall:.2f} s wall, {cpu:.2f} s of CPU for the daemon and its ffmpeg children together, i.e.
{cpu / 4:.2f} s of CPU per 10 minutes of video ({100 * cpu / 4 / RANGE:.2f} % of one core per stream played in
real time).
"""
    publish("playback", text, no_write=not args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
