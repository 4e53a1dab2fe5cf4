"""Per-race splitting of a 1 h session through HTTP vs the same single ffmpeg command by hand.

    .venv/bin/python bench/split_races.py [--hours 1] [--races 20] [--race-seconds 120] [--runs 3] [--write]

Generates (once; cached in the system temp dir) an H.264/AAC session video
with ffmpeg (160x120, 25 fps, keyframe every 2 s, ``-preset ultrafast``),
starts a real ``storaged serve`` on loopback, uploads the video, and then per
run:

* **storaged**: creates a session (``video_url`` = the upload's download
  link) with N races spread over the video, POSTs ``split_races`` and polls
  ``GET /sessions/<id>/split_races`` every 50 ms until every race has its
  ``video_url``.  Wall time from the POST to the last poll: it includes the
  worker process start, the probes, the ffmpeg pass, hashing + fsync of every
  clip into the store, and writing the races.
* **by hand**: the equivalent single ffmpeg command (one input, one
  ``-map 0:v:0 -map 0:a? -ss S -t D -c copy -movflags +faststart out.mp4`` per
  race), wall time of the process.

Each run shifts the race durations a little so that no clip of an earlier
run is deduplicated.  The medians go to the ``## sessions`` section of
BENCHMARKS.md.  Goal: storaged ≤ 1.2 × by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_video(hours: float) -> Path:
    seconds = int(hours * 3600)
    path = Path(tempfile.gettempdir()) / f"storaged-bench-session-{seconds}s.mp4"
    if path.exists():
        return path
    print(f"generating a {seconds} s session video (once) ...", flush=True)
    tmp = path.with_suffix(".part.mp4")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-nostdin",
                    "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
                    "-c:a", "aac", "-b:a", "32k", "-movflags", "+faststart", str(tmp)], check=True)
    tmp.rename(path)
    return path


def race_times(video_seconds: float, races: int, race_seconds: float, run: int) -> list[tuple[float, float]]:
    step = video_seconds / races
    return [(round(i * step + 7.3, 3), race_seconds + 0.2 * run) for i in range(races)]


def hand_command(src: Path, out_dir: Path, times: list[tuple[float, float]]) -> list[str]:
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(src)]
    for i, (start, duration) in enumerate(times):
        argv += ["-map", "0:v:0", "-map", "0:a?", "-ss", f"{start}", "-t", f"{duration}", "-c", "copy",
                 "-movflags", "+faststart", str(out_dir / f"race-{i}.mp4")]
    return argv


def run_by_hand(src: Path, work: Path, times) -> float:
    out_dir = work / "hand"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    t0 = time.perf_counter()
    subprocess.run(hand_command(src, out_dir, times), check=True)
    elapsed = time.perf_counter() - t0
    assert len(list(out_dir.iterdir())) == len(times)
    return elapsed


async def run_storaged(http: aiohttp.ClientSession, download: str, times) -> tuple[float, dict]:
    async with http.post("/sessions", json={"video_url": download}) as resp:
        sid = (await resp.json())["id"]
    for start, duration in times:
        async with http.post(f"/sessions/{sid}/races", json={"start_time": start, "duration": duration}) as resp:
            assert resp.status == 201
    t0 = time.perf_counter()
    async with http.post(f"/sessions/{sid}/split_races") as resp:
        assert resp.status == 202, await resp.text()
    while True:
        async with http.get(f"/sessions/{sid}/split_races") as resp:
            report = await resp.json()
        if report["status"] in ("done", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    assert report["status"] == "done", report
    async with http.get(f"/sessions/{sid}/races") as resp:
        races = await resp.json()
    assert all(r["video_url"] for r in races), races
    return elapsed, report


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    port = int(url.rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if s.recv(64).split(b" ")[1:2] == [b"200"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("daemon did not become healthy")


async def main_async(args) -> dict:
    src = session_video(args.hours)
    video_seconds = args.hours * 3600
    with tempfile.TemporaryDirectory(prefix="storaged-bench-split-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "storaged", "serve", "--port", str(port),
                                 "--data-dir", str(data), "--no-access-log", "--log-level", "WARNING"],
                                stdin=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_healthy(url, proc)
            async with aiohttp.ClientSession(url) as http:
                with open(src, "rb") as fh:
                    async with http.post("/upload", params={"name": src.name}, data=fh) as resp:
                        download = (await resp.json())["download"]
                ours, hand = [], []
                for run in range(args.runs):
                    times = race_times(video_seconds, args.races, args.race_seconds, run)
                    hand.append(run_by_hand(src, work, times))
                    elapsed, _ = await run_storaged(http, download, times)
                    ours.append(elapsed)
                    print(f"run {run + 1}: storaged {elapsed:.2f} s, by hand {hand[-1]:.2f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"ours": statistics.median(ours), "hand": statistics.median(hand), "runs": args.runs,
            "ours_all": ours, "hand_all": hand, "size": src.stat().st_size}


def write_section(args, res: dict) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    ratio = res["ours"] / res["hand"]
    verdict = "meets" if ratio <= GOAL else "misses"
    cmd = (f".venv/bin/python bench/split_races.py --hours {args.hours:g} --races {args.races} "
           f"--race-seconds {args.race_seconds:g} --runs {args.runs}")
    section = f"""## sessions

Splitting a {args.hours:g} h session video (H.264 ultrafast 160x120 25 fps, keyframe every 2 s, AAC;
{res['size'] / 1e6:.0f} MB) into {args.races} races of ~{args.race_seconds:g} s spread over the video, stream copy.

| what | median wall time ({res['runs']} runs) |
| --- | --- |
| `POST /sessions/<id>/split_races` → every race has its `video_url` (real daemon, loopback, polling every 50 ms) | {res['ours']:.2f} s |
| the equivalent single `ffmpeg -i … -ss S -t D -c copy … ×{args.races}` by hand | {res['hand']:.2f} s |
| ratio (goal ≤ {GOAL}×) | **{ratio:.2f}×** ({verdict} the goal) |

All runs: storaged {', '.join(f'{x:.2f}' for x in res['ours_all'])} s; by hand
{', '.join(f'{x:.2f}' for x in res['hand_all'])} s.

The ffmpeg pass itself costs what the hand command costs (the extra null output that reports progress
adds a few percent).  The difference is a fixed ~0.8-0.9 s the hand command does not pay, measured on
this machine from the job directory's files and by timing the job function: starting the job's worker
process (a fresh Python with the job engine imported, ~0.3 s), one ffprobe for the duration and the
keyframe at or before each race start (~0.12 s), hashing + fsyncing the ~100 MB of clips into the
content-addressed store (~0.3 s, four threads), and writing the 20 race records durably plus the
status polls (~0.1 s).  With a baseline of only ~1.1 s (a small-resolution hour is 150 MB) this fixed
part dominates; the goal is not met at this size.  What would close most of it lies outside the
split: a pre-started worker in the job engine, and durability (fsync) is not negotiable.
The machine is a shared 2-core box with other work running, so absolute figures are noisy.

Command: `{cmd}`
"""
    pattern = re.compile(r"^## sessions\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--races", type=int, default=20)
    parser.add_argument("--race-seconds", type=float, default=120.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    ratio = res["ours"] / res["hand"]
    print(f"storaged {res['ours']:.2f} s vs by hand {res['hand']:.2f} s: {ratio:.2f}x (goal <= {GOAL}x)")
    if args.write:
        write_section(args, res)


if __name__ == "__main__":
    main()
