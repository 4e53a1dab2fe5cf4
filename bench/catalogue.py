"""Events catalogue: queries and creates over HTTP, storaged vs SQLite behind aiohttp, side by side.

    .venv/bin/python bench/catalogue.py [--events 20000] [--queries 1000] [--seconds 10] [--write]
    .venv/bin/python bench/catalogue.py --events 1000000 --cold     # the 1M row (writes 1M files first)

The rows: ``--events`` events in sessions of 5,000 events each, spread over
~4.9 h per session (so a 300 s window holds ~85 events, as in the issue that
asked for this bench), a third with a duration of 0-10 s; written straight
into a temp data dir as the record files the daemon keeps, and into a SQLite
file with the same rows.

The yardstick: SQLite (WAL, ``synchronous=FULL``, an index on
``(session_id, time)``) behind a minimal aiohttp handler in its own process,
one commit per created row.

Measured, alternating the two servers:

* ``GET /events?session=S&from=F&to=F+300`` p50/p99, one client, random S and F;
* event creates, 16 concurrent clients for ``--seconds`` s, creates per second;
* storaged's start-up to its first events answer: the first start (no
  snapshot: it reads every file and writes one), then a start from the
  snapshot its clean stop left, warm and (``--cold``, needs root) with the
  page cache dropped; resident memory after the warm start.

Prints the section; ``--write`` also puts it into BENCHMARKS.md (``## catalogue``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (Processes, disk_tempdir, free_port, machine_note, page_cache_dropped,  # noqa: E402
                          percentile, publish, time_limit, wait_http, write_record_files)

HEADING = "catalogue"
PER_SESSION = 5000
SESSION_SECONDS = PER_SESSION * 300 / 85  # ~85 events in a 300 s window
WINDOW = 300

YARDSTICK = textwrap.dedent('''
    import json, sqlite3, sys
    from aiohttp import web
    db = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
    COLS = ("id", "session_id", "race_id", "type", "time", "duration", "data", "created")

    def row(r):
        d = dict(zip(COLS, r)); d["data"] = json.loads(d["data"]); return d

    async def query(request):
        q = request.query
        s, f, t = int(q["session"]), float(q["from"]), float(q["to"])
        rows = db.execute("SELECT * FROM events WHERE session_id=? AND time<=? AND time+coalesce(duration,0)>=? "
                          "ORDER BY id", (s, t, f)).fetchall()
        return web.json_response([row(r) for r in rows])

    async def create(request):
        b = await request.json()
        cur = db.execute("INSERT INTO events (session_id, race_id, type, time, duration, data, created) "
                         "VALUES (?,?,?,?,?,?,?)", (int(request.match_info["s"]), b.get("race_id"), b["type"],
                                                    b["time"], b.get("duration"), json.dumps(b.get("data", {})),
                                                    "2024-01-01T00:00:00Z"))
        return web.json_response({"id": cur.lastrowid}, status=201)

    async def health(request):
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/events", query)
    app.router.add_post("/sessions/{s}/events", create)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
''')


def make_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(1, n + 1):
        session = (i - 1) // PER_SESSION + 1
        duration = round(rng.uniform(0, 10), 3) if rng.random() < 1 / 3 else None
        rows.append({"id": i, "session_id": session, "race_id": None, "type": rng.choice(("lap", "crash", "pit")),
                     "time": round(rng.uniform(0, SESSION_SECONDS), 3), "duration": duration,
                     "data": {}, "created": "2024-01-01T00:00:00Z"})
    return rows


def write_tree(data: Path, rows: list[dict]) -> None:
    sessions = rows[-1]["session_id"] if rows else 0
    for kind, records in (("sessions", [{"id": s, "video_url": None, "created": "2024-01-01T00:00:00Z"}
                                        for s in range(1, sessions + 1)]), ("events", rows)):
        d = data / kind
        write_record_files(d, records)
        (d / ".next_id").write_text(str(len(records) + 1))


def write_sqlite(path: Path, rows: list[dict]) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, session_id INTEGER, race_id INTEGER, type TEXT, "
               "time REAL, duration REAL, data TEXT, created TEXT)")
    db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?)",
                   ((r["id"], r["session_id"], r["race_id"], r["type"], r["time"], r["duration"], "{}",
                     r["created"]) for r in rows))
    db.execute("CREATE INDEX by_session_time ON events (session_id, time)")
    db.commit()
    db.close()


async def query_latencies(url: str, windows: list[tuple[int, float]]) -> tuple[list[float], int]:
    samples, rows = [], 0
    async with aiohttp.ClientSession() as http:
        for session, start in windows:
            t0 = time.perf_counter()
            async with http.get(f"{url}/events", params={"session": str(session), "from": f"{start:.3f}",
                                                         "to": f"{start + WINDOW:.3f}"}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            samples.append(time.perf_counter() - t0)
            rows += len(body)
    return samples, rows


async def create_rate(url: str, seconds: float, clients: int = 16) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with http.post(f"{url}/sessions/1/events", json={"type": "lap", "time": 1.5}) as resp:
                assert resp.status == 201, await resp.text()
            done += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done / (time.monotonic() - t0)


def first_answer(procs: Processes, data: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    """Start storaged; seconds from spawn to its first /events answer (its log goes to ``log``, fresh)."""
    log.unlink(missing_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = procs.start([sys.executable, "-m", "storaged", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--data-dir", str(data)], log, cwd=str(ROOT))
    wait_http(f"{url}/events?session=1&from=0&to=1", proc, timeout=600, log=log)
    return proc, url, time.monotonic() - t0


def events_load(log: Path) -> str:
    """How the daemon's start-up built the events catalogue, as its log says."""
    m = re.search(r"events: (\d+) records in memory in ([0-9.]+)s \(([^;]+); (\d+) files read\)", log.read_text())
    return f"{float(m.group(2)):.2f} s ({m.group(3)}, {int(m.group(4)):,} files read)" if m else "not logged"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each create run")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of each measurement")
    ap.add_argument("--cold", action="store_true", help="also measure start-up with a dropped page cache (root)")
    ap.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    args = ap.parse_args()
    rng = random.Random(1)
    procs = Processes()
    with time_limit(3600), disk_tempdir("storaged-bench-catalogue-") as tmp:
        try:
            t0 = time.monotonic()
            rows = make_rows(args.events, rng)
            write_tree(tmp / "data", rows)
            write_sqlite(tmp / "events.sqlite", rows)
            sessions = rows[-1]["session_id"]
            print(f"wrote {len(rows)} events in {sessions} sessions ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
            del rows
            windows = [(rng.randint(1, sessions), rng.uniform(0, SESSION_SECONDS - WINDOW))
                       for _ in range(args.queries)]

            sq_port = free_port()
            sq_url = f"http://127.0.0.1:{sq_port}"
            procs.start([sys.executable, "-c", YARDSTICK, str(tmp / "events.sqlite"), str(sq_port)],
                        tmp / "sqlite.log")
            wait_http(sq_url + "/healthz")
            # The first start reads every file (and leaves a snapshot); its clean stop writes one too.
            log = tmp / "storaged.log"
            proc, url, unsnapped = first_answer(procs, tmp / "data", log)
            unsnapped_load = events_load(log)
            procs.stop(proc, timeout=600)
            cold = None
            if args.cold and page_cache_dropped():
                proc, url, cold = first_answer(procs, tmp / "data", log)
                cold_load = events_load(log)
                procs.stop(proc, timeout=600)
            proc, url, warm = first_answer(procs, tmp / "data", log)
            warm_load = events_load(log)
            rss = psutil.Process(proc.pid).memory_info().rss

            ours_q, theirs_q, ours_c, theirs_c = [], [], [], []
            rows_per_answer = 0
            for _ in range(args.rounds):
                s, n = asyncio.run(query_latencies(url, windows))
                ours_q += s
                rows_per_answer = n / len(windows)
                s, n2 = asyncio.run(query_latencies(sq_url, windows))
                theirs_q += s
                assert n == n2, f"the two servers disagree: {n} vs {n2} rows"
            for _ in range(args.rounds):
                ours_c.append(asyncio.run(create_rate(url, args.seconds)))
                theirs_c.append(asyncio.run(create_rate(sq_url, args.seconds)))
            rss_after = psutil.Process(proc.pid).memory_info().rss
        finally:
            procs.stop_all()

    def ms(v: float) -> str:
        return f"{v * 1000:.2f} ms"

    o50, o99 = percentile(ours_q, 50), percentile(ours_q, 99)
    t50, t99 = percentile(theirs_q, 50), percentile(theirs_q, 99)
    oc, tc = sorted(ours_c)[len(ours_c) // 2], sorted(theirs_c)[len(theirs_c) // 2]
    cmd = f".venv/bin/python bench/catalogue.py --events {args.events} --queries {args.queries} " \
          f"--seconds {args.seconds:g} --rounds {args.rounds}{' --cold' if args.cold else ''} --write"
    text = f"""`{cmd}`

{args.events:,} events in {sessions} sessions ({PER_SESSION:,} each), {rows_per_answer:.0f} rows per answer on
average; queries from one client, creates from 16; the two servers alternated, {args.rounds} rounds each.

| what | storaged | SQLite (WAL, synchronous=FULL) behind aiohttp | ratio | goal |
| --- | --- | --- | --- | --- |
| `GET /events?session&from&to` p50 | {ms(o50)} | {ms(t50)} | {o50 / t50:.2f}× the time | ≤ 1.0× |
| same, p99 | {ms(o99)} | {ms(t99)} | {o99 / t99:.2f}× | |
| event creates/s, 16 clients (median round) | {oc:,.0f} | {tc:,.0f} | {oc / tc:.2f}× | ≥ 0.5× |

| storaged start-up | spawn to first events answer | of which the events catalogue (daemon log) | goal |
| --- | --- | --- | --- |
| from the snapshot its clean stop left, warm | {warm:.2f} s | {warm_load} | < 2 s |
| the same, page cache dropped first | {f'{cold:.2f} s | {cold_load}' if cold is not None else 'not measured (`--cold`, needs root) |'} | < 10 s |
| first start, no snapshot | {unsnapped:.2f} s | {unsnapped_load} | |

Resident memory {rss / 2**20:.0f} MiB after the warm start (goal < 300 MB), {rss_after / 2**20:.0f} MiB after the creates.
All create rounds: storaged {', '.join(f'{v:,.0f}' for v in ours_c)}; SQLite {', '.join(f'{v:,.0f}' for v in theirs_c)}.

{machine_note()}."""
    publish(HEADING, text, no_write=not args.write)


if __name__ == "__main__":
    main()
