"""Benchmark: a 30 s clip out of 1 h of 10 s segments, end to end through HTTP, vs plain ffmpeg concat.

Builds one hour of tiny H.264 MPEG-TS segments (faster than real time) as
stream 1's recording in a fresh data directory, in the segmenter's own layout
(run directory, names carrying the wall clock, csv segment list), starts a
real ``storaged serve`` on loopback and asks ``/streams/1/get_clip`` for
30 s windows (request -> done, polling while it is processing).  The
yardstick runs ``ffmpeg -f concat -safe 0 -i <list> -c copy out.mp4`` on the
same segments with the same in/out points.  Goal: ≤ 1.3x the yardstick.

    .venv/bin/python bench/stream_clip.py [--rounds 9] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine_note  # noqa: E402
from storaged.recording.index import list_name, run_dir_name  # noqa: E402

SEGMENT = 10
HOUR = 3600
CLIP = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def build_recording(data: Path, t0: int) -> Path:
    """1 h of 10 s segments of stream 1, as the segmenter would have left them."""
    seg_root = data / "streams" / "1" / "segments"
    run_dir = seg_root / run_dir_name(1)
    run_dir.mkdir(parents=True)
    work = data.parent / "gen"
    work.mkdir()
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={HOUR}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
                    "-f", "segment", "-segment_time", str(SEGMENT), "-reset_timestamps", "1",
                    "-segment_format", "mpegts", "-segment_list", str(work / "list.csv"),
                    "-segment_list_type", "csv", str(work / "s%05d.ts")], check=True)
    lines = []
    for line in (work / "list.csv").read_text().splitlines():
        name, start, end = line.split(",")
        stamp = datetime.fromtimestamp(t0 + float(start), timezone.utc).strftime("%Y%m%dT%H%M%S")
        new = f"r000001-{stamp}Z.ts"
        os.rename(work / name, run_dir / new)
        lines.append(f"{new},{start},{end}\n")
    (seg_root / list_name(1)).write_text("".join(lines))
    shutil.rmtree(work)
    (data / "streams" / "1.json").write_text(json.dumps({
        "id": 1, "url": "udp://127.0.0.1:9", "description": "bench", "create_date": t0,
        "start_date": t0, "stop_date": t0 + HOUR}))
    (data / "streams" / ".next_id").write_text("2")
    (data / "streams" / "1" / "state.json").write_text(json.dumps({
        "recording": False, "session": 1, "next_run": 2, "restarts": 0,
        "runs": [{"run": 1, "session": 1, "spawned": t0, "ended": t0 + HOUR, "end_reason": "stopped"}]}))
    return run_dir


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--write", action="store_true", help="write the figures into BENCHMARKS.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stream-clip-bench-"))
    daemon = None
    try:
        data = tmp / "data"
        data.mkdir()
        t0 = int(time.time()) - 2 * HOUR
        began = time.monotonic()
        build_recording(data, t0)
        gen_seconds = time.monotonic() - began
        port = free_port()
        daemon = subprocess.Popen([sys.executable, "-m", "storaged", "serve", "--port", str(port),
                                   "--data-dir", str(data), "--no-access-log", "--log-level", "WARNING",
                                   "--stream-clip-wait", "5"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp / "daemon.log", "wb"), cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                get(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        status = get(base + "/streams/1/status")
        first = status["first_segment_start"]
        assert status["segments"] == HOUR // SEGMENT, status

        ours, plain, inside = [], [], []
        for i in range(args.rounds):
            # Different windows (fresh jobs), not aligned to segment boundaries, 3-4 segments each.
            a = round(first + 60 + (i * 237.3) % (HOUR - 120), 3)
            b = a + CLIP
            t = time.perf_counter()
            while True:
                out = get(f"{base}/streams/1/get_clip?start={a}&stop={b}")
                if out["status"] == "done":
                    break
                time.sleep(0.01)
            ours.append(time.perf_counter() - t)
            inside.append(out["seconds"])
            print("  round", i, round(ours[-1], 3), out["timings"])
            assert len(out["clips"]) == 1 and out["missing"] == [], out
            job = data / "streams" / "1" / "clips" / out["clip_id"]
            listing = job / "clip0.ffconcat"
            target = tmp / f"plain{i}.mp4"
            t = time.perf_counter()
            subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                            "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(target)],
                           check=True, stdin=subprocess.DEVNULL)
            plain.append(time.perf_counter() - t)
        m_ours, m_plain = statistics.median(ours), statistics.median(plain)
        ratio = m_ours / m_plain
        print(f"segments: {HOUR // SEGMENT} x {SEGMENT}s generated in {gen_seconds:.1f}s")
        print(f"get_clip 30 s (request -> done, HTTP): median {m_ours * 1000:.1f} ms  "
              f"(min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f}) over {args.rounds}")
        print(f"  of which the cut task (plan + ffmpeg + store): median {statistics.median(inside) * 1000:.1f} ms")
        print(f"plain ffmpeg -f concat -c copy:        median {m_plain * 1000:.1f} ms  "
              f"(min {min(plain) * 1000:.1f}, max {max(plain) * 1000:.1f})")
        print(f"ratio {ratio:.2f}x (goal <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}")
        print(machine_note())
        if args.write:
            write_section(m_ours, m_plain, ratio, args.rounds, ours, plain)
        return 0
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def write_section(m_ours, m_plain, ratio, rounds, ours, plain) -> None:
    """Replace the `### clip cutting` block of the `## streams` section."""
    block = (
        "### clip cutting (bench/stream_clip.py)\n\n"
        "`.venv/bin/python bench/stream_clip.py --write` — a 30 s clip out of 1 h of 10 s segments (360 tiny "
        "H.264 MPEG-TS segments), end to end through HTTP (request → `done`) on a real daemon, vs the plain "
        "`ffmpeg -f concat -safe 0 -i list -c copy -movflags +faststart out.mp4` on the same segments with "
        f"the same in/out points; median of {rounds} different windows.\n\n"
        "| what | median | min | max |\n| --- | --- | --- | --- |\n"
        f"| `get_clip` through HTTP | {m_ours * 1000:.0f} ms | {min(ours) * 1000:.0f} ms | "
        f"{max(ours) * 1000:.0f} ms |\n"
        f"| plain `ffmpeg -f concat … -c copy` | {m_plain * 1000:.0f} ms | {min(plain) * 1000:.0f} ms | "
        f"{max(plain) * 1000:.0f} ms |\n\n"
        f"Ratio **{ratio:.2f}×** (goal ≤ 1.3×: {'met' if ratio <= 1.3 else 'not met'}). {machine_note()}.\n")
    update_benchmarks("### clip cutting", block)


def update_benchmarks(heading: str, block: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "\n## streams\n" not in text:
        text = text.rstrip("\n") + "\n\n## streams\n\n"
    head, _, rest = text.partition("\n## streams\n")
    nxt = rest.find("\n## ")
    section, tail = (rest, "") if nxt < 0 else (rest[:nxt + 1], rest[nxt + 1:])
    start = section.find(heading)
    if start >= 0:
        end = section.find("\n### ", start + 1)
        section = section[:start] + block + ("" if end < 0 else "\n" + section[end + 1:])
    else:
        section = section.rstrip("\n") + "\n\n" + block
    path.write_text(head + "\n## streams\n" + "\n" + section.lstrip("\n") + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    raise SystemExit(main())
