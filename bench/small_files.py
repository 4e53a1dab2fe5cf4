"""Small-object GETs: storaged vs nginx (sendfile) vs a minimal aiohttp handler returning the bytes.

    .venv/bin/python bench/small_files.py [--objects 1000] [--size 4096] [--seconds 10] [--rounds 3] [--write]

``--objects`` random objects of ``--size`` bytes are uploaded to a real
``storaged serve``; nginx serves the very same files (hard links) from a
directory laid out as ``/download/<id>``, and a minimal aiohttp app holds them
in a dict.  Load: ``wrk -t2 -c32`` for ``--seconds`` s per run against one URL
and against all URLs (a wrk script picks one at random per request), the three
servers alternated, ``--rounds`` rounds; the median round is reported.  wrk and
nginx come from Debian (installed when missing, as root).

Prints the section; ``--write`` also puts it into BENCHMARKS.md (``## small files``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (Processes, disk_tempdir, ensure_tool, free_port, machine_note, publish,  # noqa: E402
                          start_daemon, start_nginx, static_nginx_config, time_limit, wait_http)

HEADING = "small files"

MINIMAL = textwrap.dedent('''
    import os, sys
    from aiohttp import web
    root = sys.argv[1]
    blobs = {name: open(os.path.join(root, name), "rb").read() for name in os.listdir(root)}

    async def get(request):
        data = blobs.get(request.match_info["id"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    async def health(request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/download/{id}", get)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
''')

RANDOM_URLS = textwrap.dedent('''
    local ids = {}
    for line in io.lines("{ids}") do ids[#ids + 1] = line end
    request = function()
        return wrk.format("GET", "/download/" .. ids[math.random(#ids)])
    end
''')


async def upload_all(url: str, count: int, size: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            async with http.post(f"{url}/upload?name=o{i}.bin", data=os.urandom(size)) as resp:
                assert resp.status == 200, await resp.text()
                ids.append((await resp.json())["file_id"])
    return ids


def wrk(binary: str, url: str, seconds: float, script: Path | None) -> tuple[float, float]:
    argv = [binary, "-t2", "-c32", f"-d{seconds:g}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, f"{url}: {errors.group(0)}"
    return rps, p99


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="put the section into BENCHMARKS.md")
    args = ap.parse_args()
    wrk_bin = ensure_tool("wrk", "wrk")
    nginx = ensure_tool("nginx", "nginx-light")
    if wrk_bin is None or nginx is None:
        sys.exit("this bench needs wrk and nginx (Debian packages wrk, nginx-light)")
    procs = Processes()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with time_limit(3600), disk_tempdir("storaged-bench-small-") as tmp:
        try:
            _proc, ours = start_daemon(procs, tmp / "data", tmp / "storaged.log")
            ids = asyncio.run(upload_all(ours, args.objects, args.size))
            served = tmp / "root" / "download"
            served.mkdir(parents=True)
            for file_id in ids:
                od = tmp / "data" / file_id[:2] / file_id[2:]
                stored = next(p for p in od.iterdir() if p.is_file() and not p.is_symlink() and p.name != "meta.json")
                os.link(stored, served / file_id)
            (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
            script = tmp / "random.lua"
            script.write_text(RANDOM_URLS.replace("{ids}", str(tmp / "ids.txt")))
            ngx_port, min_port = free_port(), free_port()
            (tmp / "ngx").mkdir()
            _ngx, version = start_nginx(procs, nginx, tmp / "ngx", static_nginx_config(tmp / "ngx", ngx_port, tmp / "root"),
                                        ngx_port)
            mini = procs.start([sys.executable, "-c", MINIMAL, str(served), str(min_port)], tmp / "minimal.log")
            wait_http(f"http://127.0.0.1:{min_port}/healthz", mini)
            servers = {"storaged": ours, "nginx": f"http://127.0.0.1:{ngx_port}",
                       "aiohttp": f"http://127.0.0.1:{min_port}"}
            for _ in range(args.rounds):
                for name, base in servers.items():
                    results.setdefault((name, "one"), []).append(
                        wrk(wrk_bin, f"{base}/download/{ids[0]}", args.seconds, None))
                    results.setdefault((name, "all"), []).append(wrk(wrk_bin, base, args.seconds, script))
        finally:
            procs.stop_all()

    def median(name: str, which: str) -> tuple[float, float]:
        runs = sorted(results[(name, which)])
        return runs[len(runs) // 2]

    rows = []
    for which, label in (("one", "one URL"), ("all", f"{args.objects:,} URLs, random")):
        (o, o99), (n, n99), (a, a99) = median("storaged", which), median("nginx", which), median("aiohttp", which)
        rows.append(f"| {label} | {o:,.0f} req/s, p99 {o99:.1f} ms | {n:,.0f} req/s, p99 {n99:.1f} ms | "
                    f"{a:,.0f} req/s, p99 {a99:.1f} ms | **{o / n:.3f}×** nginx, {o / a:.2f}× aiohttp |")
    text = f"""`.venv/bin/python bench/small_files.py --objects {args.objects} --size {args.size} --seconds {args.seconds:g} --rounds {args.rounds} --write`

{args.objects:,} objects of {args.size:,} bytes; `wrk -t2 -c32 -d{args.seconds:g}s` per run, the three servers
alternated, median of {args.rounds} rounds. Yardsticks: {version} (sendfile on, `worker_processes auto`)
serving the same files; a minimal aiohttp handler returning the bytes from a dict.

| load | storaged | nginx | minimal aiohttp | ratio (goal ≥ 0.25× nginx) |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

wrk, the servers and the daemon share the same 2 cores. {machine_note()}."""
    publish(HEADING, text, no_write=not args.write)


if __name__ == "__main__":
    main()
