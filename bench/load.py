"""Mixed traffic at high concurrency against a daemon that records a stream and runs jobs.

    .venv/bin/python bench/load.py [--seconds 60] [--connections 200]

One real ``storaged serve`` on loopback records a live UDP source (ffmpeg
publishing MPEG-TS in real time, 1 s segments) and runs a stream of short
dummy analyses, while ``--connections`` aiohttp clients (one connection each,
kept alive) send a weighted mix of requests for ``--seconds``: metadata reads
(health, file meta, session/race/event records, event queries, videostream
overlap queries, job status polls, stream status, the upload list), small
writes (sessions, events, videostreams, 4 KiB uploads) and 256 KiB
downloads.  Reported per route: requests, throughput, p50/p99 latency and
errors (any non-2xx answer or transport error).  Goal: zero errors, p99 under
100 ms for the metadata routes.  Figures go to the ``## load and
reliability`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import contextlib
import json
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (Processes, disk_tempdir, machine_note, percentile,  # noqa: E402
                          time_limit, write_section)
from bench.common import start_daemon  # noqa: E402

METADATA = {"GET /healthz", "GET /upload/{id}", "GET /sessions/{id}", "GET /races/{id}", "GET /events?session",
            "GET /api/v1/videostreams?timespan", "GET /results/{id}/{aid}", "GET /streams/{id}/status",
            "GET /upload?limit"}


def udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def seed(http: aiohttp.ClientSession, url: str, source: str) -> dict:
    ids: dict = {}
    async with http.post(f"{url}/upload", params={"name": "dl.bin"}, data=os.urandom(256 * 1024)) as r:
        ids["file"] = (await r.json())["file_id"]
    async with http.post(f"{url}/analyse", json={"file_id": ids["file"], "analysis": "dummy",
                                                  "args": {"seconds": 0.1}}) as r:
        ids["aid"] = (await r.json())["analysis_id"]
    async with http.post(f"{url}/sessions", json={"video_url": f"/download/{ids['file']}"}) as r:
        ids["session"] = (await r.json())["id"]
    async with http.post(f"{url}/sessions/{ids['session']}/races", json={"start_time": 1, "duration": 5}) as r:
        ids["race"] = (await r.json())["id"]
    for i in range(50):
        async with http.post(f"{url}/sessions/{ids['session']}/events", json={"time": i, "type": "lap"}) as r:
            r.raise_for_status()
    for i in range(200):
        async with http.post(f"{url}/api/v1/videostreams", json={
                "stream_url": f"rtsp://cam/{i}", "capturesource": 1 + i % 5,
                "startTime": f"2024-01-01T{i % 24:02d}:00:00Z", "endTime": f"2024-01-01T{i % 24:02d}:30:00Z"}) as r:
            r.raise_for_status()
    async with http.post(f"{url}/streams/create", data={"url": source}) as r:
        ids["stream"] = (await r.json())["stream_id"]
    async with http.post(f"{url}/streams/{ids['stream']}/start") as r:
        r.raise_for_status()
    return ids


def mix(ids: dict) -> list[tuple[str, int, str, str, dict]]:
    """(label, weight, method, path, kwargs)."""
    f, s = ids["file"], ids["session"]
    return [
        ("GET /healthz", 10, "GET", "/healthz", {}),
        ("GET /upload/{id}", 10, "GET", f"/upload/{f}", {}),
        ("GET /sessions/{id}", 10, "GET", f"/sessions/{s}", {}),
        ("GET /races/{id}", 5, "GET", f"/races/{ids['race']}", {}),
        ("GET /events?session", 8, "GET", "/events", {"params": {"session": str(s), "from": "10", "to": "20"}}),
        ("GET /api/v1/videostreams?timespan", 8, "GET", "/api/v1/videostreams",
         {"params": {"timespan[start]": "2024-01-01T05:10:00Z", "timespan[end]": "2024-01-01T06:10:00Z"}}),
        ("GET /results/{id}/{aid}", 10, "GET", f"/results/{f}/{ids['aid']}", {}),
        ("GET /streams/{id}/status", 8, "GET", f"/streams/{ids['stream']}/status", {}),
        ("GET /upload?limit", 3, "GET", "/upload", {"params": {"limit": "20"}}),
        ("POST /sessions", 4, "POST", "/sessions", {"json": {"video_url": "/download/x"}}),
        ("POST /sessions/{id}/events", 4, "POST", f"/sessions/{s}/events", {"json": {"time": 1.5, "type": "x"}}),
        ("POST /api/v1/videostreams", 4, "POST", "/api/v1/videostreams",
         {"json": {"stream_url": "rtsp://cam/x", "startTime": "2024-02-01T00:00:00Z"}}),
        ("POST /upload (4 KiB)", 3, "POST", "/upload", {"data": None}),
        ("GET /download/{id} (256 KiB)", 3, "GET", f"/download/{f}", {}),
    ]


async def client_loop(url: str, routes, weights, deadline: float, lat, errors, rng: random.Random) -> None:
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as http:
        while time.monotonic() < deadline:
            label, _, method, path, kw = rng.choices(routes, weights)[0]
            if "data" in kw:
                kw = {"data": rng.randbytes(4096), "params": {"name": "l.bin"}}
            began = time.perf_counter()
            try:
                async with http.request(method, url + path, **kw) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            lat[label].append(time.perf_counter() - began)
            if not ok:
                errors[label] += 1


async def jobs_loop(url: str, file_id: str, deadline: float) -> int:
    n = 0
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            n += 1
            async with http.post(f"{url}/analyse", json={"file_id": file_id, "analysis": "dummy",
                                                          "args": {"seconds": round(0.5 + n / 1000, 3)}}) as r:
                await r.read()
            await asyncio.sleep(0.5)
    return n


async def run(url: str, source: str, seconds: float, connections: int) -> tuple[dict, dict, int, float, dict]:
    async with aiohttp.ClientSession() as http:
        ids = await seed(http, url, source)
    routes = mix(ids)
    weights = [w for _, w, *_ in routes]
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    rng = random.Random(1)
    began = time.monotonic()
    deadline = began + seconds
    clients = [client_loop(url, routes, weights, deadline, lat, errors, random.Random(rng.random()))
               for _ in range(connections)]
    results = await asyncio.gather(jobs_loop(url, ids["file"], deadline), *clients)
    elapsed = time.monotonic() - began
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/streams/{ids['stream']}/status") as r:
            status = await r.json()
        async with http.post(f"{url}/streams/{ids['stream']}/stop") as r:
            await r.read()
    return lat, errors, results[0], elapsed, status


def report(lat, errors, jobs: int, elapsed: float, status: dict, seconds: float, connections: int) -> str:
    rows = ["| route | requests | req/s | p50 ms | p99 ms | errors |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    total = sum(len(v) for v in lat.values())
    meta_p99 = []
    for label in sorted(lat, key=lambda k: -len(lat[k])):
        xs = lat[label]
        p99 = percentile(xs, 99) * 1000
        if label in METADATA:
            meta_p99.append(p99)
        rows.append(f"| `{label}`{' (metadata)' if label in METADATA else ''} | {len(xs)} | {len(xs) / elapsed:.0f} "
                    f"| {percentile(xs, 50) * 1000:.1f} | {p99:.1f} | {errors.get(label, 0)} |")
    all_xs = [x for v in lat.values() for x in v]
    rows.append(f"| **all** | {total} | {total / elapsed:.0f} | {percentile(all_xs, 50) * 1000:.1f} "
                f"| {percentile(all_xs, 99) * 1000:.1f} | {sum(errors.values())} |")
    worst = max(meta_p99) if meta_p99 else float("nan")
    verdict = (f"Errors: **{sum(errors.values())}** (goal 0). Worst metadata-route p99: **{worst:.1f} ms** "
               f"(goal < 100 ms) — {'met' if worst < 100 and not errors else 'NOT met'}.")
    return "\n".join([
        "```sh",
        f".venv/bin/python bench/load.py --seconds {seconds:g} --connections {connections}",
        "```",
        "",
        f"{seconds:g} s of mixed traffic from {connections} concurrent keep-alive connections (aiohttp "
        "clients in one process on the same machine, so the load generator competes with the daemon for "
        "the 2 cores), while the daemon recorded a live 25 fps UDP source into 1 s segments "
        f"({status.get('segments')} segments, {status.get('restarts')} restarts during the run) and ran "
        f"{jobs} short dummy analyses (one every 0.5 s, through the job zygote).",
        "",
        *rows,
        "",
        verdict,
        "",
        f"Machine: {machine_note()}. Run once; the machine was shared with other test suites at the time, "
        "so absolute latencies are pessimistic.",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = ap.parse_args()
    procs = Processes()
    with disk_tempdir("storaged-load-") as tmp, time_limit(args.seconds + 240):
        try:
            port = udp_port()
            procs.start(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi",
                         "-i", "testsrc2=size=160x120:rate=25", "-c:v", "libx264", "-preset", "ultrafast",
                         "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", "25", "-f", "mpegts",
                         f"udp://127.0.0.1:{port}?pkt_size=1316"])
            _, url = start_daemon(procs, tmp / "data", tmp / "daemon.log", "--no-access-log",
                                  "--stream-segment-time", "2", "--janitor-interval", "0", "--min-free", "0")
            lat, errors, jobs, elapsed, status = asyncio.run(
                run(url, f"udp://127.0.0.1:{port}", args.seconds, args.connections))
        finally:
            procs.stop_all()
            # Segmenters run detached; /stop ends ours, this ends one an error left behind (by its pid).
            for pidfile in (tmp / "data" / "streams").glob("*/inrun.pid"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    os.kill(int(json.loads(pidfile.read_text())["pid"]), signal.SIGTERM)
    body = report(lat, errors, jobs, elapsed, status, args.seconds, args.connections)
    print(body)
    if args.write:
        write_section("load and reliability", body + "\n\n" + RELIABILITY)
    return 0


RELIABILITY = """### Reliability suites (tests/reliability/)

Correctness, not speed; the long crash loop is `bench/crash_loop.py` (its
figures are in *crash loop* below). See the README section *Proof: reliability
suites*."""


if __name__ == "__main__":
    sys.exit(main())
