"""Daemon start-up at scale: spawn → /healthz → first answer, the daemon's CPU to each, and its memory.

    .venv/bin/python bench/startup.py [--records 100000] [--rounds 3] [--path '/api/v1/videostreams?limit=1']
    .venv/bin/python bench/startup.py --data DIR --against OTHER_CHECKOUT --rounds 3

Without ``--data`` it writes ``--records`` videostreams (the rows of
bench/videostreams_query.py: 365 days, 20 capture sources, same seed) into a
temp data dir; with ``--data`` it uses that data dir as it is (and keeps it).
A first start without a usable snapshot builds one (reported apart); then
``--rounds`` warm starts, each measuring: spawn to ``/healthz`` 200 and to
the first 200 of ``--path``, the daemon's user+sys CPU at both (the figure a
loaded machine does not set), resident memory right after the first answer
and ``--settle`` seconds later (anonymous and file-backed apart).

``--against`` names another checkout of storaged (e.g. a worktree of an
older commit): its daemon is started from there with the same Python, on the
same data, alternating with this checkout's round by round, so both see the
same load.  Prints the table; ``--write`` also puts it into BENCHMARKS.md
(``## start-up``).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import disk_tempdir, free_port, machine_note, publish  # noqa: E402

HEADING = "start-up"


def _get(port: int, path: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        return s.recv(64).split(b" ")[1:2] == [b"200"]


def _memory(proc: psutil.Process) -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB."""
    fields = {}
    with open(f"/proc/{proc.pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) / 1024
    return fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0)


def start_once(checkout: Path, data: Path, path: str, settle: float, log: Path) -> dict:
    """One start of the daemon of ``checkout`` on ``data``; stops it cleanly (it writes its snapshot)."""
    port = free_port()
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "storaged", "serve", "--port", str(port), "--data-dir",
                                 str(data), "--no-access-log"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=checkout)
    ps = psutil.Process(proc.pid)

    def cpu() -> float:
        c = ps.cpu_times()
        return c.user + c.system

    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited:\n{log.read_text()}")
            try:
                if _get(port, "/healthz"):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        res = {"healthz": time.monotonic() - t0, "healthz_cpu": cpu()}
        if not _get(port, path):
            raise SystemExit(f"GET {path} did not answer 200")
        res.update(first=time.monotonic() - t0, first_cpu=cpu())
        res["anon"], res["file"] = _memory(ps)
        time.sleep(settle)
        res["anon_later"], res["file_later"] = _memory(ps)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # An older daemon's stop waited for its janitor's pass, which read every record file.
            print(f"the daemon of {checkout} did not stop within 60 s; killed", flush=True)
            proc.kill()
            proc.wait()
    return res


def write_videostreams(data: Path, records: int) -> None:
    from bench.videostreams_query import make_records, write_records
    write_records(data, make_records(records, 20, 365, random.Random(20230607)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000, help="videostreams to write (without --data)")
    ap.add_argument("--data", type=Path, help="use this data dir as it is (kept)")
    ap.add_argument("--path", default="/api/v1/videostreams?limit=1", help="the first request after /healthz")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the first answer to read memory again")
    ap.add_argument("--against", type=Path, help="another checkout, started alternately on the same data")
    ap.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    args = ap.parse_args()
    checkouts = [("this checkout", ROOT)] + ([("--against", args.against.resolve())] if args.against else [])
    with disk_tempdir("startup-") as tmp:
        data = args.data
        if data is None:
            data = tmp / "data"
            t = time.perf_counter()
            write_videostreams(data, args.records)
            print(f"wrote {args.records:,} videostreams in {time.perf_counter() - t:.0f} s", flush=True)
        first = start_once(ROOT, data, args.path, 0.0, tmp / "first.log")
        print(f"first start (builds the snapshot if none is usable): first answer {first['first']:.2f} s", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name, _ in checkouts}
        for n in range(args.rounds):
            for name, checkout in checkouts:
                r = start_once(checkout, data, args.path, args.settle, tmp / f"{n}.log")
                r["load"] = os.getloadavg()[0]
                runs[name].append(r)
                print(f"{name} round {n + 1}: healthz {r['healthz']:.2f} s (cpu {r['healthz_cpu']:.2f} s), first "
                      f"answer {r['first']:.2f} s (cpu {r['first_cpu']:.2f} s), anon {r['anon']:.0f} MiB, "
                      f"file {r['file']:.0f} MiB; {args.settle:.0f} s later anon {r['anon_later']:.0f} MiB, "
                      f"file {r['file_later']:.0f} MiB; load {r['load']:.1f}", flush=True)
    records = f"{args.records:,} videostreams written by the bench" if args.data is None else "the given data dir"
    argv = []
    for arg, value in zip(sys.argv[1:], [None, *sys.argv[1:]]):
        argv.append({"--data": "DIR", "--against": "OTHER_CHECKOUT"}.get(value, arg))  # no machine paths
    lines = [
        f"`storaged serve` on {records}, {args.rounds} warm starts from the snapshot its clean stop left"
        + (", alternating with the checkout given as `--against`" if args.against else "")
        + f"; first request `{args.path}`; medians (all rounds printed by the bench).",
        "",
        "```sh",
        "./.venv/bin/python bench/startup.py " + " ".join(map(shlex.quote, argv)),
        "```",
        "",
        "| daemon | spawn → `/healthz` | its CPU | spawn → first answer | its CPU | RSS anon + file after it "
        f"| {args.settle:.0f} s later | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rs in runs.items():
        m = {k: median(r[k] for r in rs) for k in rs[0]}
        lines.append(f"| {name} | {m['healthz']:.2f} s | {m['healthz_cpu']:.2f} s | {m['first']:.2f} s | "
                     f"{m['first_cpu']:.2f} s | {m['anon']:.0f} + {m['file']:.0f} MiB | {m['anon_later']:.0f} + "
                     f"{m['file_later']:.0f} MiB | {min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f} |")
    lines += ["", machine_note() + "."]
    publish(HEADING, "\n".join(lines), no_write=not args.write)


if __name__ == "__main__":
    main()
