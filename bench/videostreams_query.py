"""Videostreams overlap queries: the in-memory index vs SQLite, over HTTP, and daemon start-up.

    .venv/bin/python bench/videostreams_query.py [--records 100000] [--queries 2000] [--cold] [--write]
    .venv/bin/python bench/videostreams_query.py --records 1000000 --sources 20 --days 365 --cold

Writes 100,000 videostream records (60 days, 10 capture sources, durations
log-uniform 30 s .. 6 h, the last stream of each source still live) straight
into a temp data dir as the JSON files the daemon keeps, then measures, side
by side on the same rows and the same 2,000 random windows (half 60 s, half
1 h, random source):

* the catalogue's in-process query (span index + records) p50/p99, and the bare
  span index;
* SQLite (python's sqlite3, in memory) with an index on (capturesource, start):
  the plain overlap query, and a tuned one bounded by the longest duration;
* a real ``storaged serve`` on loopback: its first start (no snapshot: it
  reads every record file), then starts from the snapshot its clean stop
  left, warm and (``--cold``, needs root) with the page cache dropped: spawn
  to /healthz and to the first videostreams answer; resident memory after the
  warm start, and HTTP query p50/p99.

Prints the section; ``--write`` also puts it into BENCHMARKS.md (``## videostreams``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import disk_tempdir, machine_note, page_cache_dropped, publish, write_record_files  # noqa: E402
from storaged.store import snapshot  # noqa: E402
from storaged.store.layout import Layout  # noqa: E402
from storaged.videostreams import times  # noqa: E402
from storaged.videostreams.service import VideostreamCatalogue  # noqa: E402

DAY_US = 86400 * 1_000_000
T0 = times.parse_us("2024-01-01T00:00:00Z", "t0")


def make_records(n: int, sources: int, days: int, rng: random.Random) -> list[dict]:
    source_ids = [rng.randrange(2**40, 2**53) for _ in range(sources)]
    ids = set()
    rows = []
    for _ in range(n):
        rid = rng.randrange(2**40, 2**53)
        while rid in ids:
            rid = rng.randrange(2**40, 2**53)
        ids.add(rid)
        start = T0 + rng.randrange(days * DAY_US)
        duration = int(10 ** rng.uniform(1.477, 4.334) * 1_000_000)  # 30 s .. 6 h
        rows.append([rid, start, start + duration, f"https://vid.example/get?id={rid}", rng.choice(source_ids)])
    latest: dict[int, list] = {}
    for row in rows:
        if row[4] not in latest or row[1] > latest[row[4]][1]:
            latest[row[4]] = row
    for row in latest.values():
        row[2] = None
    return rows


def write_records(data: Path, rows: list[list]) -> None:
    write_record_files(data / "videostreams", [
        {"id": rid, "startTime": times.format_us(start), "endTime": None if end is None else times.format_us(end),
         "stream_url": url, "capturesource": source} for rid, start, end, url, source in rows])


def make_windows(count: int, days: int, sources: list[int], rng: random.Random) -> list[tuple]:
    out = []
    for i in range(count):
        length = 60 if i % 2 == 0 else 3600
        qs = T0 + rng.randrange(days * DAY_US)
        out.append((qs, qs + length * 1_000_000, rng.choice(sources)))
    return out


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def us(x: float) -> str:
    return f"{x * 1e6:.1f} µs" if x < 1e-3 else f"{x * 1e3:.2f} ms"


def sqlite_db(rows: list[list]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE vs (id INTEGER PRIMARY KEY, capturesource INTEGER, start INTEGER, "
               "end_ INTEGER, stream_url TEXT)")
    db.executemany("INSERT INTO vs VALUES (?, ?, ?, ?, ?)",
                   [(r[0], r[4], r[1], r[2], r[3]) for r in rows])
    db.execute("CREATE INDEX vs_source_start ON vs (capturesource, start)")
    db.execute("CREATE INDEX vs_live ON vs (capturesource, start) WHERE end_ IS NULL")
    db.execute("ANALYZE")
    return db


PLAIN = ("SELECT id, start, end_, stream_url, capturesource FROM vs WHERE capturesource = ? AND start <= ? "
         "AND (end_ IS NULL OR end_ >= ?) ORDER BY start, id")
# Closed streams can only start within the longest duration before the window;
# live ones (end NULL) are few and found through a partial index of their own.
TUNED = ("SELECT id, start, end_, stream_url, capturesource FROM vs WHERE capturesource = ? "
         "AND start BETWEEN ? AND ? AND end_ >= ? "
         "UNION ALL SELECT id, start, end_, stream_url, capturesource FROM vs INDEXED BY vs_live "
         "WHERE capturesource = ? AND start <= ? AND end_ IS NULL ORDER BY 2, 1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(data: Path, log_path: Path) -> tuple[subprocess.Popen, int, float, float]:
    """The daemon, its port, seconds to /healthz 200, seconds to the first videostreams answer."""
    port = free_port()
    t0 = time.monotonic()
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "storaged", "serve", "--port", str(port), "--data-dir",
                             str(data), "--no-access-log"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=ROOT)
    deadline = t0 + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if s.recv(64).split(b" ")[1:2] == [b"200"]:
                    healthy = time.monotonic() - t0
                    break
        except OSError:
            pass
        time.sleep(0.01)
    else:
        proc.kill()
        raise SystemExit("daemon did not start")
    # A catalogue request waits for the index rebuild that runs in the background.
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        s.sendall(b"GET /api/v1/videostreams?limit=1 HTTP/1.0\r\n\r\n")
        assert s.recv(64).split(b" ")[1:2] == [b"200"]
    return proc, port, healthy, time.monotonic() - t0


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=600)  # a clean stop writes the snapshot
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def http_queries(port: int, windows: list[tuple]) -> tuple[list[float], int]:
    samples = []
    total = 0
    async with aiohttp.ClientSession() as session:
        for qs, qe, source in windows:
            params = {"timespan[start]": times.format_us(qs), "timespan[end]": times.format_us(qe),
                      "capturesource": str(source)}
            t = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}/api/v1/videostreams", params=params) as resp:
                body = await resp.read()
            samples.append(time.perf_counter() - t)
            assert resp.status == 200, body
            total += len(json.loads(body)["results"])
    return samples, total


async def in_process(data: Path, windows: list[tuple], db: sqlite3.Connection, max_closed: int) -> dict:
    catalogue = VideostreamCatalogue(Layout(data))
    t = time.perf_counter()
    await catalogue.load()
    load_s = time.perf_counter() - t
    memory = catalogue.memory
    res: dict = {"load": load_s, "records": len(catalogue)}
    answers: dict[str, list] = {}

    # One engine at a time over all windows (interleaving them would let each
    # evict the other's caches), then the answers are compared.
    async def service(qs, qe, source):
        return [r["id"] for r in (await catalogue.query(qs, qe, source)).items]

    async def bare(qs, qe, source):
        return [i for _, i in memory.spans(qs, qe, group=source, any_group=False)]

    async def plain(qs, qe, source):
        return [r[0] for r in db.execute(PLAIN, (source, qe, qs)).fetchall()]

    async def tuned(qs, qe, source):
        return [r[0] for r in db.execute(TUNED, (source, qs - max_closed, qe, qs, source, qe)).fetchall()]

    for name, engine in (("service", service), ("index", bare), ("plain", plain), ("tuned", tuned)):
        for qs, qe, source in windows[:100]:  # warm-up
            await engine(qs, qe, source)
        samples, found = [], []
        for qs, qe, source in windows:
            t = time.perf_counter()
            ids = await engine(qs, qe, source)
            samples.append(time.perf_counter() - t)
            found.append(ids)
        res[name], answers[name] = samples, found
    if not answers["service"] == answers["index"] == answers["plain"] == answers["tuned"]:
        raise SystemExit("the engines' answers differ")
    res["answers"] = sum(len(ids) for ids in answers["service"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="also measure a start with a dropped page cache (root)")
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = ap.parse_args()
    rng = random.Random(20230607)
    rows = make_records(args.records, args.sources, args.days, rng)
    sources = sorted({r[4] for r in rows})
    windows = make_windows(args.queries, args.days, sources, rng)
    max_closed = max(r[2] - r[1] for r in rows if r[2] is not None)
    load_before = os.getloadavg()[0]
    with disk_tempdir("vsbench-") as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        write_records(data, rows)
        print(f"wrote {len(rows)} records in {time.perf_counter() - t:.1f}s", flush=True)
        db = sqlite_db(rows)
        res = asyncio.run(in_process(data, windows, db, max_closed))
        print(f"in-process: load {res['load']:.2f}s, {res['answers']} answers", flush=True)

        empty = Path(tmp) / "empty"
        empty.mkdir()
        proc, _, _, _ = start_daemon(empty, Path(tmp) / "empty.log")
        base_rss = psutil.Process(proc.pid).memory_info().rss
        stop_daemon(proc)

        # The in-process load left a snapshot: the daemon's first start goes without, as after an upgrade.
        snapshot.drop(snapshot.path_for(data, "videostreams"))
        proc, _, _, first_s = start_daemon(data, Path(tmp) / "first.log")
        stop_daemon(proc)
        cold_s = None
        if args.cold and page_cache_dropped():
            proc, _, cold_healthy_s, cold_s = start_daemon(data, Path(tmp) / "cold.log")
            stop_daemon(proc)
        proc, port, healthy_s, ready_s = start_daemon(data, Path(tmp) / "daemon.log")
        try:
            rss = psutil.Process(proc.pid).memory_info().rss
            asyncio.run(http_queries(port, windows[:50]))  # warm-up
            http, http_answers = asyncio.run(http_queries(port, windows))
        finally:
            stop_daemon(proc)
        m = re.search(r"loaded (\d+) records in ([0-9.]+)s", (Path(tmp) / "daemon.log").read_text())
        rebuild = float(m.group(2)) if m else float("nan")
        m = re.search(r"loaded (\d+) records in ([0-9.]+)s", (Path(tmp) / "first.log").read_text())
        first_rebuild = float(m.group(2)) if m else float("nan")
        # Published before the temp dir goes: removing a million files takes minutes.
        extra = "" if (args.records, args.queries, args.days, args.sources) == (100_000, 2000, 60, 10) else (
            f" --records {args.records} --queries {args.queries} --days {args.days} --sources {args.sources}")
        cold_row = (f"| the same with the page cache dropped first (`--cold`) | {cold_s:.2f} s (`/healthz` "
                    f"{cold_healthy_s:.2f} s) | < 10 s |" if cold_s is not None else
                    "| the same with the page cache dropped first | not measured (needs root) | < 10 s |")
        lines = [
            "Overlap queries over the catalogue (`GET /api/v1/videostreams?timespan[start]=&timespan[end]="
            "&capturesource=`).",
            "",
            "```sh",
            "." + f"/.venv/bin/python bench/videostreams_query.py{extra}{' --cold' if args.cold else ''} --write",
            "```",
            "",
            f"{len(rows):,} videostreams over {args.days} days and {args.sources} capture sources (durations "
            "log-uniform 30 s .. 6 h, the latest stream of each source still live), written as the daemon's "
            f"JSON files; {len(windows):,} random windows (half 60 s, half 1 h), each for one random capture "
            f"source; {res['answers']:,} matches in all (every engine gave the same ids in the same order). "
            "SQLite is python's sqlite3, in memory, with an index on (capturesource, start), same rows, same run.",
            "",
            "| query engine | p50 | p99 |",
            "| --- | --- | --- |",
            f"| catalogue `query()` (span index + records, in-process) | {us(pct(res['service'], 50))} | "
            f"{us(pct(res['service'], 99))} |",
            f"| bare span index (`Catalogue.spans()`, ids only) | {us(pct(res['index'], 50))} | "
            f"{us(pct(res['index'], 99))} |",
            f"| SQLite, plain overlap query (`start <= qe AND (end IS NULL OR end >= qs)`) | "
            f"{us(pct(res['plain'], 50))} | {us(pct(res['plain'], 99))} |",
            f"| SQLite, tuned (`start BETWEEN qs - longest AND qe`, + live rows by a partial index) | "
            f"{us(pct(res['tuned'], 50))} | "
            f"{us(pct(res['tuned'], 99))} |",
            f"| HTTP on loopback, real daemon, keep-alive client (goal p50 < 2 ms) | {us(pct(http, 50))} | "
            f"{us(pct(http, 99))} |",
            "",
            "| daemon start-up | figure | goal |",
            "| --- | --- | --- |",
            f"| `storaged serve` spawn → first videostreams query answered, {res['records']:,} records, from the "
            f"snapshot the last clean stop left, warm | {ready_s:.2f} s (`/healthz` {healthy_s:.2f} s) | < 2 s |",
            cold_row,
            f"| of which loading the catalogue (snapshot read and checked against the directory, in a thread) "
            f"| {rebuild:.2f} s | |",
            f"| the first start, without a snapshot (reads every record file, then writes one) | {first_s:.2f} s "
            f"(loading {first_rebuild:.2f} s) | |",
            f"| the same rebuild in the bench process (`VideostreamCatalogue.load()`, every file) | {res['load']:.2f} s | |",
            f"| resident memory after the warm start | {rss / 2**20:.0f} MiB (empty data dir: {base_rss / 2**20:.0f} MiB)"
            " | < 300 MB at 1M |",
            "",
            f"{machine_note()} (1-minute load {load_before:.1f} at the start); figures are one run, not a best of.",
            "",
        ]
        publish("videostreams", "\n".join(lines), no_write=not args.write)




if __name__ == "__main__":
    main()
