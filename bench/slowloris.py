"""Benchmark: a slowloris against storaged, side by side with nginx under the same slowloris.

A separate client process (this file, ``--client``) opens ``--connections``
connections (default 2,000) to the server as fast as it accepts them, sends a
request line and then one more header line every ``--trickle`` seconds, never
ending the head.  Both servers get the same request-head timeout
(``--header-timeout``, default 10 s: storaged's ``header_timeout``, nginx's
``client_header_timeout``) and room for every connection (storaged
``max_connections``, nginx ``worker_connections``), so what is measured is what
holding and shedding them costs.  Meanwhile this process asks ``GET /healthz``
over a new connection every 20 ms, before the slowloris (baseline) and while it
runs.  Reported per server:

* connections held: the most slowloris connections open at once (client side);
* shed: how many the server closed, idle clients shed per second (count over
  the span from the first to the last close), and how long after the head
  timeout they were closed (p50/p99; measured by the client from just before
  it connected, so a busy client makes it look a little late, never early);
* ``/healthz`` p50/p99/max latency, baseline and during the slowloris (all of
  it: the connection flood, the hold, the shedding), the same for the probes
  made while every connection was held (after the last one opened, before the
  first close: the cost of holding them), and how many probes failed.

    .venv/bin/python bench/slowloris.py                          # 2,000 connections
    .venv/bin/python bench/slowloris.py --connections 500 --no-write

Writes its section of BENCHMARKS.md only with ``--write``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (Processes, disk_tempdir, ensure_tool, free_port, machine_note,  # noqa: E402
                          percentile, publish, start_daemon, start_nginx, time_limit)

HEADING = "hostile clients (slowloris)"


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# -- the slowloris client (a separate process) ---------------------------------------------


async def slowloris(port: int, connections: int, trickle: float, give_up: float) -> dict:
    loop = asyncio.get_running_loop()
    opened: list[float] = []
    closed: list[float] = []
    close_at: list[float] = []
    failed = 0
    open_now = 0
    most_open = 0

    async def one(i: int) -> None:
        nonlocal failed, open_now, most_open
        began = loop.time()  # before the SYN: a lifetime is never shorter than the server's view of it
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            failed += 1
            return
        opened.append(loop.time())
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            writer.write(f"GET /healthz?slow={i} HTTP/1.1\r\nHost: bench\r\n".encode())

            async def trickle_lines() -> None:
                n = 0
                while True:
                    await asyncio.sleep(trickle)
                    writer.write(f"X-Slow-{n}: {'a' * 20}\r\n".encode())
                    n += 1

            trickler = asyncio.create_task(trickle_lines())
            try:
                while await asyncio.wait_for(reader.read(4096), give_up):
                    pass  # an answer (a 408 or 503) still ends in a close
            except (ConnectionError, asyncio.TimeoutError):
                pass
            finally:
                trickler.cancel()
            closed.append(loop.time() - began)
            close_at.append(loop.time())
        finally:
            open_now -= 1
            writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return {"opened": len(opened), "failed": failed, "most_open": most_open,
            "open_span": (max(opened) - min(opened)) if opened else 0.0,
            "lifetimes": closed, "close_span": (max(close_at) - min(close_at)) if close_at else 0.0,
            "all_open_at": max(opened) if opened else 0.0, "first_close_at": min(close_at) if close_at else 0.0}


def client_main(args: argparse.Namespace) -> int:
    raise_fd_limit(args.connections + 512)
    result = asyncio.run(slowloris(args.port, args.connections, args.trickle, args.give_up))
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the probe and the run per server --------------------------------------------------------


async def probe_once(port: int) -> float | None:
    began = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writer.write(b"GET /healthz HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return None
    return time.perf_counter() - began if data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200") \
        else None


async def probe_while(port: int, running) -> tuple[list[tuple[float, float]], int]:
    """(monotonic start, latency) of each /healthz probe while ``running()``, and the failures."""
    latencies, failures = [], 0
    while running():
        at = time.monotonic()  # the same clock as the client process's loop.time()
        t = await probe_once(port)
        if t is None:
            failures += 1
        else:
            latencies.append((at, t))
        await asyncio.sleep(0.02)
    return latencies, failures


async def run_against(port: int, args: argparse.Namespace, work: Path, name: str) -> dict:
    until = time.monotonic() + args.baseline
    baseline, base_failures = await probe_while(port, lambda: time.monotonic() < until)
    out = work / f"{name}-client.json"
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", "--port", str(port), "--connections", str(args.connections),
        "--trickle", str(args.trickle), "--give-up", str(args.header_timeout * 6 + 30), "--out", str(out),
        stdin=subprocess.DEVNULL)
    during, failures = await probe_while(port, lambda: client.returncode is None)
    await client.wait()
    result = json.loads(out.read_text())
    lifetimes = result["lifetimes"]
    late = [t - args.header_timeout for t in lifetimes]
    span = result["close_span"]  # from the first close to the last one
    held = [t for at, t in during if result["all_open_at"] <= at and at + t <= result["first_close_at"]]
    return {"held": result["most_open"], "opened": result["opened"], "connect_failed": result["failed"],
            "shed": len(lifetimes), "shed_per_s": len(lifetimes) / span if span > 0 else float("inf"),
            "late_p50": percentile(late, 50), "late_p99": percentile(late, 99),
            "open_span": result["open_span"], "base": [t for _, t in baseline], "base_failures": base_failures,
            "during": [t for _, t in during], "held_only": held, "failures": failures}


def nginx_config(work: Path, port: int, args: argparse.Namespace) -> Path:
    conf = work / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}worker_processes auto;
worker_rlimit_nofile {args.connections * 2 + 1024};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections {args.connections + 1024}; }}
http {{
    access_log off;
    client_header_timeout {args.header_timeout:g}s;
    keepalive_timeout 75s;
    client_body_temp_path {work}/ngx-body;
    proxy_temp_path {work}/ngx-proxy;
    fastcgi_temp_path {work}/ngx-fastcgi;
    uwsgi_temp_path {work}/ngx-uwsgi;
    scgi_temp_path {work}/ngx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=511;
        location = /healthz {{ default_type application/json; return 200 '{{"ok": true}}'; }}
    }}
}}
""")
    return conf


def ms(v: float) -> str:
    return f"{v * 1000:.1f}"


def render(results: dict, args: argparse.Namespace, nginx_version: str) -> str:
    cmd = "python bench/slowloris.py" + (f" --connections {args.connections}" if args.connections != 2000 else "")
    lines = [
        f"`{cmd}` — {args.connections} connections opened as fast as the server accepts them, each sending a "
        f"request line and then one header line every {args.trickle:g} s, never finishing the head; both servers "
        f"have a {args.header_timeout:g} s request-head timeout (storaged `--header-timeout "
        f"{args.header_timeout:g}`, nginx `client_header_timeout`) and room for every connection (storaged "
        f"`--max-connections {args.connections + 1024}`, nginx `worker_connections {args.connections + 1024}`, "
        f"`worker_processes auto`). `GET /healthz` on a new connection every 20 ms from another process, "
        f"{args.baseline:g} s before (baseline) and during the slowloris. Yardstick: {nginx_version}. "
        f"{machine_note()}.",
        "",
        "| server | connections held (opened within s) | shed | idle clients shed / s | "
        "closed after the timeout p50 / p99 (s) | /healthz p50 / p99 / max, baseline (ms) | "
        "/healthz p50 / p99 / max, during (ms) | of which while all were held (ms) | /healthz failed during |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | |")
            continue
        b, d, h = r["base"], r["during"], r["held_only"] or [float("nan")]
        lines.append(
            f"| {name} | {r['held']} ({r['open_span']:.1f}) | {r['shed']} | {r['shed_per_s']:.0f} | "
            f"{r['late_p50']:.2f} / {r['late_p99']:.2f} | "
            f"{ms(percentile(b, 50))} / {ms(percentile(b, 99))} / {ms(max(b))} | "
            f"{ms(percentile(d, 50))} / {ms(percentile(d, 99))} / {ms(max(d))} ({len(d)} probes) | "
            f"{ms(percentile(h, 50))} / {ms(percentile(h, 99))} / {ms(max(h))} ({len(r['held_only'])}) | "
            f"{r['failures']} |")
    return "\n".join(lines)


async def bench(args: argparse.Namespace, work: Path, procs: Processes) -> tuple[dict, str]:
    results: dict[str, dict] = {}
    extra = ["--header-timeout", f"{args.header_timeout:g}", "--max-connections", str(args.connections + 1024),
             "--no-access-log"]
    proc, url = start_daemon(procs, work / "data", work / "storaged.log", *extra)
    try:
        results["storaged"] = await run_against(int(url.rsplit(":", 1)[1]), args, work, "storaged")
    finally:
        procs.stop(proc)
    nginx = ensure_tool("nginx", "nginx-light")
    version = "nginx (missing)"
    if nginx is None:
        results["nginx"] = {"skipped": "nginx is missing and could not be installed"}
        return results, version
    ngx = work / "nginx"
    ngx.mkdir()
    port = free_port()
    proc, version = start_nginx(procs, nginx, ngx, nginx_config(ngx, port, args), port)
    try:
        results["nginx"] = await run_against(port, args, work, "nginx")
    finally:
        procs.stop(proc)
    return results, version


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--trickle", type=float, default=2.0, help="seconds between header lines")
    ap.add_argument("--baseline", type=float, default=3.0, help="seconds of /healthz probes before the slowloris")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="(the default) only print")
    # the client process
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--give-up", type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)
    raise_fd_limit(args.connections * 2 + 1024)
    procs = Processes()
    try:
        with disk_tempdir("storaged-slowloris-") as work, time_limit(args.header_timeout * 20 + 300):
            results, version = asyncio.run(bench(args, work, procs))
    finally:
        procs.stop_all()
    publish(HEADING, render(results, args, version), no_write=not args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
