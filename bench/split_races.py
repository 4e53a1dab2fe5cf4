"""Per-race splitting of a 1 h session through HTTP vs the same single ffmpeg command by hand.

    .venv/bin/python bench/split_races.py [--hours 1] [--races 20] [--race-seconds 120] [--runs 3] [--write]

Generates (once; cached in the system temp dir) an H.264/AAC session video
with ffmpeg (160x120, 25 fps, keyframe every 2 s, ``-preset ultrafast``),
starts a real ``storaged serve`` on loopback, uploads the video, and then
runs ``--runs`` rounds, each of three measurements in alternating order:

* **by hand** (the yardstick): the equivalent single ffmpeg command (one
  input, one ``-map 0:v:0 -map 0:a? -ss S -t D -c copy -movflags +faststart
  out.mp4`` per race), wall time of the process.
* **storaged, first split of the video**: the keyframe cache beside the
  stored video is removed first (this bench's own data directory), so the
  job runs its seeking ffprobe.  A session is created (``video_url`` = the
  upload's download link) with N races spread over the video, then
  ``split_races`` is POSTed and ``GET /sessions/<id>/split_races`` polled
  every 50 ms until ``done``; every race must then have its ``video_url``.
  Wall time from the POST to the last poll: the worker, the probe, the
  ffmpeg pass, hashing + fsync of every clip into the store, writing the
  races.
* **storaged, split again**: the same with the keyframes known (a re-split
  after races were edited, or a second session on the same video).

Each split shifts the race durations a little so that no clip of an earlier
run is deduplicated.  Prints the medians with the yardstick beside them and
the load average; only ``--write`` puts them into the ``## sessions``
section of BENCHMARKS.md (a hand-written ``### Analysis`` there is kept).
Goal: storaged ≤ 1.2 × by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = 1.2


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


def forget_keyframes(data: Path, download: str) -> None:
    """Remove the keyframe cache beside the uploaded video (storaged.sessions.keyframes), so that
    the next split is the video's first."""
    file_id = download.split("/")[2]
    (data / file_id[:2] / file_id[2:] / "keyframes.json").unlink(missing_ok=True)


async def main_async(args) -> dict:
    src = session_video(args.hours)
    video_seconds = args.hours * 3600
    procs = common.Processes()
    with common.disk_tempdir("storaged-bench-split-") as work:
        try:
            _, url = common.start_daemon(procs, work / "data", work / "daemon.log",
                                         "--no-access-log", "--log-level", "WARNING")
            async with aiohttp.ClientSession(url) as http:
                with open(src, "rb") as fh:
                    async with http.post("/upload", params={"name": src.name}, data=fh) as resp:
                        download = (await resp.json())["download"]
                cold, warm, hand = [], [], []
                for run in range(args.runs):
                    async def first_split() -> None:
                        forget_keyframes(work / "data", download)
                        cold.append((await run_storaged(http, download, race_times(
                            video_seconds, args.races, args.race_seconds, 2 * run)))[0])

                    async def split_again() -> None:
                        warm.append((await run_storaged(http, download, race_times(
                            video_seconds, args.races, args.race_seconds, 2 * run + 1)))[0])

                    async def by_hand() -> None:
                        hand.append(run_by_hand(src, work, race_times(video_seconds, args.races,
                                                                      args.race_seconds, run)))

                    steps = [by_hand, first_split, split_again]
                    for step in steps if run % 2 == 0 else steps[::-1]:
                        await step()
                    print(f"run {run + 1}: by hand {hand[-1]:.2f} s, storaged first split {cold[-1]:.2f} s, "
                          f"split again {warm[-1]:.2f} s; load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            procs.stop_all()
    return {"cold": common.median(cold), "warm": common.median(warm), "hand": common.median(hand),
            "runs": args.runs, "cold_all": cold, "warm_all": warm, "hand_all": hand,
            "size": src.stat().st_size}


def section(args, res: dict) -> str:
    def verdict(ratio: float) -> str:
        return "meets" if ratio <= GOAL else "misses"

    cold, warm = res["cold"] / res["hand"], res["warm"] / res["hand"]
    cmd = (f"nice .venv/bin/python bench/split_races.py --hours {args.hours:g} --races {args.races} "
           f"--race-seconds {args.race_seconds:g} --runs {args.runs}")
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    return f"""Splitting a {args.hours:g} h session video (H.264 ultrafast 160x120 25 fps, keyframe every 2 s, AAC;
{res['size'] / 1e6:.0f} MB) into {args.races} races of ~{args.race_seconds:g} s spread over the video, stream copy.
Yardstick: the equivalent single `ffmpeg -i … -ss S -t D -c copy … ×{args.races}` by hand. The three were
alternated in each of {res['runs']} rounds; medians.

| what | median wall time | ratio to by hand (goal ≤ {GOAL}×) |
| --- | --- | --- |
| by hand (yardstick) | {res['hand']:.2f} s | 1 |
| `POST /sessions/<id>/split_races` → `done`, every race has its `video_url`: first split of the video (keyframe cache removed) | {res['cold']:.2f} s | **{cold:.2f}×** ({verdict(cold)} the goal) |
| the same, split again (keyframes known) | {res['warm']:.2f} s | **{warm:.2f}×** ({verdict(warm)} the goal) |

All runs: by hand {runs(res['hand_all'])} s; first split {runs(res['cold_all'])} s; split again
{runs(res['warm_all'])} s. {common.machine_note()}.

Command: `{cmd} --write`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--races", type=int, default=20)
    parser.add_argument("--race-seconds", type=float, default=120.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    common.publish("sessions", section(args, res), no_write=not args.write)


if __name__ == "__main__":
    main()
