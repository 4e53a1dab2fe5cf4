"""Benchmark: files (upload/download) of storaged against its yardsticks.

* upload ingest of one ``--size`` file (default 1 GiB) with ``curl -T``: storaged's
  ``POST /upload`` vs a minimal aiohttp handler (this file, ``--yardstick-server``,
  run as a separate process) that streams the body with ``iter_chunked``, hashes
  (SHA-256) and writes it in 1 MiB steps in a thread, fsyncs, renames into place and
  fsyncs the directory.  Goal ≥ 0.9× its throughput.
* download of the stored file with 1 and 4 parallel ``curl -o /dev/null``:
  storaged's ``GET /download/<id>`` vs nginx (sendfile on) serving the very same file
  from its own generated config on a free loopback port, warm (page-cached) and cold (the
  file's pages evicted before each run).  Goal ≥ 0.95×.
* event-loop lag: ``GET /healthz`` every 10 ms during 4 concurrent uploads of
  ``--size`` each: p50/p99/max.  Goal p99 < 20 ms.  The yardstick server gets the
  same treatment, for reference.
* peak RSS of the daemon process (psutil, every 50 ms) during one upload of
  2 × ``--size``, minus its idle RSS.  Goal < 50 MB.

    .venv/bin/python bench/files_bench.py                 # full scale: 1 GiB (2 GiB for RSS)
    .venv/bin/python bench/files_bench.py --size 256M     # reduced scale
    .venv/bin/python bench/files_bench.py --only upload,download

nginx comes from Debian (``apt-get install -y nginx``, as root or with sudo) when it
is missing; the download part is skipped if it cannot be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MiB,
    BenchTimeout,
    Processes,
    disk_tempdir,
    ensure_tool,
    free_port,
    human_size,
    machine_note,
    mb_s,
    median,
    parse_size,
    percentile,
    start_daemon,
    start_nginx,
    static_nginx_config,
    time_limit,
    wait_http,
    write_random_file,
)

DOWNLOAD_GOAL = 0.95  # issue 14: 1 GiB downloads at nginx speed

SECTION = "files (upload/download)"
PARTS = ("upload", "download", "lag", "rss")
PROBE_EVERY = 0.010
RSS_EVERY = 0.050


# -- the yardstick: a minimal aiohttp ingest handler ---------------------------------


def yardstick_server(port: int, directory: Path) -> None:
    """Run the minimal aiohttp upload handler (blocking).  Separate process."""
    from aiohttp import web

    chunk = MiB

    def absorb(fh, hasher, data: bytes) -> None:
        hasher.update(data)
        fh.write(data)

    def finish(fh) -> None:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()

    def commit(tmp: Path, final: Path) -> None:
        os.rename(tmp, final)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def upload(request: web.Request) -> web.Response:
        tmp = directory / f"up-{secrets.token_hex(8)}.tmp"
        hasher = hashlib.sha256()
        size = 0
        buf = bytearray()
        fh = open(tmp, "xb")
        async for data in request.content.iter_chunked(chunk):
            size += len(data)
            buf += data
            if len(buf) >= chunk:
                await asyncio.to_thread(absorb, fh, hasher, buf)
                buf = bytearray()
        if buf:
            await asyncio.to_thread(absorb, fh, hasher, buf)
        await asyncio.to_thread(finish, fh)
        oid = hasher.hexdigest()
        await asyncio.to_thread(commit, tmp, directory / oid)
        return web.json_response({"file_id": oid, "size": size})

    async def healthz(request: web.Request) -> web.Response:
        usage = await asyncio.to_thread(shutil.disk_usage, directory)
        return web.json_response({"ok": True, "free_bytes": usage.free})

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/upload", upload)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- clients ------------------------------------------------------------------------


async def curl(*args: str, timeout: float = 600) -> tuple[str, list[str]]:
    """Run curl; answer (body, stats fields from the -w line)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--noproxy", "*", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed: {err.decode(errors='replace')}")
    body, _, stats = out.decode(errors="replace").rpartition("\n")
    return body, stats.split()


async def curl_upload(url: str, path: Path) -> tuple[float, dict]:
    """POST ``path`` as the raw body with ``curl -T``; answer (curl's total time, JSON answer)."""
    body, stats = await curl("-X", "POST", "-T", str(path), "-H", "Expect:", "-H",
                             "Content-Type: application/octet-stream", "-w", "\n%{time_total} %{http_code}",
                             f"{url}/upload?name={path.name}")
    if stats[1] != "200":
        raise RuntimeError(f"upload to {url} answered {stats[1]}: {body[:300]}")
    return float(stats[0]), json.loads(body)


async def curl_download(url: str, size: int) -> float:
    _body, stats = await curl("-o", "/dev/null", "-w", "\n%{time_total} %{size_download} %{http_code}", url)
    if stats[2] != "200" or int(stats[1]) != size:
        raise RuntimeError(f"download of {url}: status {stats[2]}, {stats[1]} bytes (expected {size})")
    return float(stats[0])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the process's main thread (its event loop) and of its other threads."""
    import psutil

    loop = others = 0.0
    for t in psutil.Process(pid).threads():
        if t.id == pid:
            loop += t.user_time + t.system_time
        else:
            others += t.user_time + t.system_time
    return loop, others


def ratio_text(ratio: float, goal: float) -> str:
    """The ratio with two decimals, or three when two would round onto the goal and hide which side it is."""
    text = f"{ratio:.2f}"
    if float(text) == goal and ratio != goal:
        text = f"{ratio:.3f}"
    return text + "×"


# -- parts ----------------------------------------------------------------------------


async def bench_upload(ctx: dict, repeat: int) -> dict:
    src: Path = ctx["src"]
    size = src.stat().st_size
    rows: dict[str, list] = {"storaged": [], "yardstick": []}
    cpu: dict[str, list] = {"storaged": [], "yardstick": []}
    for r in range(repeat):
        order = ("storaged", "yardstick") if r % 2 == 0 else ("yardstick", "storaged")
        for who in order:
            pid = ctx["pids"][who]
            c0 = cpu_seconds(pid)
            seconds, answer = await curl_upload(ctx["urls"][who], src)
            c1 = cpu_seconds(pid)
            cpu[who].append((c1[0] - c0[0], c1[1] - c0[1]))
            assert answer["size"] == size, answer
            rows[who].append(mb_s(size, seconds))
            await forget(ctx, who, answer["file_id"])
            print(f"  upload {who:9s} run {r + 1}: {rows[who][-1]:7.1f} MB/s", file=sys.stderr)
    return {"size": size, "runs": rows, "cpu": cpu}


async def forget(ctx: dict, who: str, file_id: str) -> None:
    """Remove an uploaded object, so the next upload does the whole work again (no dedupe)."""
    if who == "storaged":
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{ctx['urls']['storaged']}/upload/{file_id}") as resp:
                assert resp.status == 200, await resp.text()
    else:
        for p in ctx["yard_dir"].iterdir():
            p.unlink()


async def bench_download(ctx: dict, repeat: int, procs: Processes) -> dict:
    nginx = ensure_tool("nginx", "nginx")
    if nginx is None:
        return {"skipped": "nginx is missing and could not be installed (needs root or sudo)"}
    src: Path = ctx["src"]
    size = src.stat().st_size
    _t, answer = await curl_upload(ctx["urls"]["storaged"], src)
    file_id = answer["file_id"]
    obj_dir = ctx["data"] / file_id[:2] / file_id[2:]
    stored = next(p for p in obj_dir.iterdir() if p.is_file() and not p.is_symlink() and p.name != "meta.json")
    ngx_work = ctx["work"] / "nginx"
    ngx_work.mkdir()
    port = free_port()
    proc, version = start_nginx(procs, nginx, ngx_work, static_nginx_config(ngx_work, port, obj_dir), port)
    try:
        urls = {"storaged": f"{ctx['urls']['storaged']}/download/{file_id}/{stored.name}",
                "nginx": f"http://127.0.0.1:{port}/{stored.name}"}
        for url in urls.values():  # warm-up: both read the same page-cached file from here on
            await curl_download(url, size)
        rows: dict[tuple[str, int, str], list] = {}
        cpu: dict[tuple[str, int, str], list] = {}  # server CPU seconds per GiB sent
        pids = {"storaged": ctx["pids"]["storaged"], "nginx": proc.pid}
        for r in range(repeat):
            for cache in ("warm", "cold"):
                for clients in (1, 4):
                    order = ("storaged", "nginx") if r % 2 == 0 else ("nginx", "storaged")
                    for who in order:
                        if cache == "cold":
                            drop_from_page_cache(stored)
                        c0 = tree_cpu(pids[who])
                        t0 = time.perf_counter()
                        await asyncio.gather(*(curl_download(urls[who], size) for _ in range(clients)))
                        wall = time.perf_counter() - t0
                        runs = rows.setdefault((who, clients, cache), [])
                        runs.append(mb_s(size * clients, wall))
                        cpu.setdefault((who, clients, cache), []).append(
                            (tree_cpu(pids[who]) - c0) / (size * clients / 1024 ** 3))
                        print(f"  download {cache} {who:8s} x{clients} run {r + 1}: {runs[-1]:7.1f} MB/s",
                              file=sys.stderr)
        return {"size": size, "runs": rows, "cpu": cpu, "nginx_version": version}
    finally:
        procs.stop(proc)
        await forget(ctx, "storaged", file_id)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (nginx's workers) so far."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def drop_from_page_cache(path: Path) -> None:
    """Evict the file's pages (this file only, not the machine's cache): the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def probe_loop(url: str, stop: asyncio.Event, min_seconds: float = 0.0) -> list[float]:
    """GET ``url`` every 10 ms (one keep-alive connection) until ``stop``; answer latencies in seconds."""
    import aiohttp

    out: list[float] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        tick = time.perf_counter()
        while not stop.is_set() or time.perf_counter() - started < min_seconds:
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
                assert resp.status == 200
            out.append(time.perf_counter() - t0)
            tick = max(tick + PROBE_EVERY, time.perf_counter())
            await asyncio.sleep(tick - time.perf_counter())
    return out


async def bench_lag(ctx: dict, idle_seconds: float = 3.0) -> dict:
    src: Path = ctx["src"]
    res = {}
    for who in ("storaged", "yardstick"):
        url = ctx["urls"][who]
        idle_stop = asyncio.Event()
        idle_stop.set()
        idle = await probe_loop(url + "/healthz", idle_stop, idle_seconds)
        stop = asyncio.Event()
        probes = asyncio.create_task(probe_loop(url + "/healthz", stop))
        t0 = time.perf_counter()
        try:
            answers = await asyncio.gather(*(curl_upload(url, src) for _ in range(4)))
        finally:
            stop.set()
            loaded = await probes
        wall = time.perf_counter() - t0
        for fid in {a["file_id"] for _t, a in answers}:
            await forget(ctx, who, fid)
        res[who] = {"idle": idle, "loaded": loaded, "wall": wall, "bytes": 4 * src.stat().st_size}
        print(f"  lag {who:9s}: p50 {percentile(loaded, 50) * 1e3:.1f} ms p99 {percentile(loaded, 99) * 1e3:.1f} "
              f"ms max {max(loaded) * 1e3:.1f} ms over {len(loaded)} probes", file=sys.stderr)
    return res


async def bench_rss(ctx: dict, procs: Processes, size: int) -> dict:
    import psutil

    big = ctx["work"] / "big.bin"
    with open(ctx["src"], "rb") as fin, open(big, "wb") as fout:
        while fout.tell() < size:  # the random file repeated: cheap to make, still one new object
            fin.seek(0)
            shutil.copyfileobj(fin, fout, 8 * MiB)
        fout.truncate(size)
        os.fsync(fout.fileno())
    data = ctx["work"] / "data-rss"
    proc, url = start_daemon(procs, data, ctx["work"] / "daemon-rss.log")
    try:
        p = psutil.Process(proc.pid)
        import aiohttp

        async with aiohttp.ClientSession() as http:  # warm: the first request imports/allocates lazily
            for _ in range(3):
                async with http.get(url + "/healthz") as resp:
                    await resp.read()
        idle_samples = []
        for _ in range(20):
            idle_samples.append(p.memory_info().rss)
            await asyncio.sleep(RSS_EVERY)
        idle = median(idle_samples)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    samples.append(p.memory_info().rss)
                done.wait(RSS_EVERY)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            seconds, answer = await curl_upload(url, big)
        finally:
            done.set()
            sampler.join()
        after = p.memory_info().rss
        assert answer["size"] == size
        print(f"  rss: idle {idle / 1e6:.1f} MB, peak {max(samples) / 1e6:.1f} MB", file=sys.stderr)
        return {"size": size, "idle": idle, "peak": max(samples), "after": after, "samples": len(samples),
                "throughput": mb_s(size, seconds)}
    finally:
        procs.stop(proc)
        big.unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)


# -- report -----------------------------------------------------------------------------


def cpu_text(runs: list[tuple[float, float]]) -> str:
    loop, others = median([r[0] for r in runs]), median([r[1] for r in runs])
    return f"{loop:.2f} + {others:.2f} = {loop + others:.2f}"


def verdict(ok: bool) -> str:
    return "meets the goal" if ok else "**misses the goal**"


def render(args, res: dict, elapsed: float) -> str:
    size = parse_size(args.size)
    cmd = ".venv/bin/python bench/files_bench.py" + (f" --size {args.size}" if args.size != "1G" else "") + (
        f" --repeat {args.repeat}" if args.repeat != 3 else "") + (
        f" --only {args.only}" if args.only != ",".join(PARTS) else "")
    full = size >= 1024 ** 3
    out = [f"Command: `{cmd}` (took {elapsed:.0f} s).  "
           + ("Full scale." if full else f"**Reduced scale** ({human_size(size)} instead of 1 GiB, "
              "because the machine is shared right now); the full-scale command is "
              "`.venv/bin/python bench/files_bench.py`."),
           "",
           f"Machine: {machine_note()}.  Other test suites and benches were running at the same time, so "
           "figures are noisy: each row is the median of the runs listed, storaged and its yardstick "
           "interleaved (alternating which goes first).  Loopback only; files in a temp dir on the same "
           "ext4 disk as the data dir.",
           ""]
    if "upload" in res:
        u = res["upload"]
        ours, yard = median(u["runs"]["storaged"]), median(u["runs"]["yardstick"])
        ratio = ours / yard
        out += ["### Upload ingest",
                "",
                f"One {human_size(u['size'])} file of random bytes, `curl -T` (raw body, `POST /upload`), "
                "wall time as curl reports it (until the answer, i.e. after the fsync and the commit).  "
                "Yardstick: a minimal aiohttp handler (`files_bench.py --yardstick-server`, its own process) that "
                "reads `iter_chunked(1 MiB)`, hashes (SHA-256) and writes each 1 MiB in a thread "
                "(`asyncio.to_thread`), fsyncs, renames into place, fsyncs the directory.  "
                "Each stored object is deleted after each run, so every run does the full work.",
                "",
                "| server | MB/s (median) | runs | server CPU s per run, event-loop thread + other threads "
                "(medians) |",
                "| --- | --- | --- | --- |",
                f"| storaged `POST /upload` | {ours:.0f} | {', '.join(f'{x:.0f}' for x in u['runs']['storaged'])} "
                f"| {cpu_text(u['cpu']['storaged'])} |",
                f"| minimal aiohttp handler | {yard:.0f} | "
                f"{', '.join(f'{x:.0f}' for x in u['runs']['yardstick'])} | {cpu_text(u['cpu']['yardstick'])} |",
                "",
                f"Ratio storaged / yardstick: **{ratio_text(ratio, 0.9)}** (goal ≥ 0.9×: {verdict(ratio >= 0.9)}).",
                ""]
    if "download" in res:
        d = res["download"]
        out += ["### Download", ""]
        if "skipped" in d:
            out += [f"Skipped: {d['skipped']}.", ""]
        else:
            out += [f"The same {human_size(d['size'])} stored file, `curl -o /dev/null` (1 client, then 4 in "
                    f"parallel; MB/s = all bytes / wall time of the slowest).  Yardstick: {d['nginx_version']} "
                    "from Debian, `sendfile on; tcp_nopush on; worker_processes auto; access_log off`, root = the "
                    "object's directory in the data dir, its own generated config/pid/logs in a temp dir.  "
                    "Warm: one warm-up download each first, the file stays in the page cache.  Cold: the file's "
                    "pages are evicted (`posix_fadvise(DONTNEED)` on that file only) before every run, so each "
                    "run reads it from the disk.  Server CPU: user + system seconds of the server process "
                    "and its children (nginx's workers) during the run, per GiB sent — the figure the "
                    "machine's load does not set (a run's MB/s is mostly the curls' share of the CPUs).",
                    "",
                    f"| cache | clients | storaged MB/s | nginx MB/s | ratio (goal ≥ {DOWNLOAD_GOAL}×) "
                    "| runs storaged / nginx | server CPU s per GiB sent, storaged / nginx (medians) |",
                    "| --- | --- | --- | --- | --- | --- | --- |"]
            for cache in ("warm", "cold"):
                for clients in (1, 4):
                    ours, ngx = d["runs"][("storaged", clients, cache)], d["runs"][("nginx", clients, cache)]
                    ratio = median(ours) / median(ngx)
                    out.append(f"| {cache} | {clients} | {median(ours):.0f} | {median(ngx):.0f} | "
                               f"**{ratio_text(ratio, DOWNLOAD_GOAL)}** ({verdict(ratio >= DOWNLOAD_GOAL)}) | "
                               f"{', '.join(f'{x:.0f}' for x in ours)} / {', '.join(f'{x:.0f}' for x in ngx)} | "
                               f"{median(d['cpu'][('storaged', clients, cache)]):.2f} / "
                               f"{median(d['cpu'][('nginx', clients, cache)]):.2f} |")
            out.append("")
    if "lag" in res:
        lag = res["lag"]
        s = lag["storaged"]["loaded"]
        p99 = percentile(s, 99) * 1e3
        out += ["### Event-loop lag during uploads",
                "",
                f"`GET /healthz` every 10 ms on one keep-alive connection (aiohttp client) while 4 `curl -T` "
                f"uploads of {human_size(parse_size(args.size))} each run at once; latency of each probe.  "
                "Idle = the same probe for 3 s before the uploads.  The yardstick server (same 4 uploads, a "
                "`/healthz` that also calls `disk_usage` in a thread) is there for reference: it shows how much of "
                "the lag the machine itself adds.",
                "",
                "| server | probes | idle p50 / p99 ms | loaded p50 ms | loaded p99 ms | loaded max ms | "
                "upload MB/s (4 together) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for who, label in (("storaged", "storaged"), ("yardstick", "minimal aiohttp handler")):
            r = lag[who]
            out.append(f"| {label} | {len(r['loaded'])} | {percentile(r['idle'], 50) * 1e3:.1f} / "
                       f"{percentile(r['idle'], 99) * 1e3:.1f} | {percentile(r['loaded'], 50) * 1e3:.1f} | "
                       f"{percentile(r['loaded'], 99) * 1e3:.1f} | {max(r['loaded']) * 1e3:.1f} | "
                       f"{mb_s(r['bytes'], r['wall']):.0f} |")
        out += ["", f"storaged p99 = {p99:.1f} ms (goal < 20 ms: {verdict(p99 < 20)}).", ""]
    if "rss" in res:
        r = res["rss"]
        extra = (r["peak"] - r["idle"]) / 1e6
        out += ["### Memory while ingesting",
                "",
                f"A fresh daemon; RSS of the daemon process only (psutil, every 50 ms) while `curl -T` uploads "
                f"one {human_size(r['size'])} file ({r['samples']} samples, {r['throughput']:.0f} MB/s).  Idle = "
                "median of 20 samples after three `/healthz` requests.",
                "",
                "| idle RSS | peak RSS | peak − idle | RSS after the upload |",
                "| --- | --- | --- | --- |",
                f"| {r['idle'] / 1e6:.1f} MB | {r['peak'] / 1e6:.1f} MB | **{extra:.1f} MB** | "
                f"{r['after'] / 1e6:.1f} MB |",
                "",
                f"Goal < 50 MB above idle: {verdict(extra < 50)}.",
                ""]
    if res.get("notes"):
        out += ["### Findings", "", *res["notes"], ""]
    return "\n".join(out)


async def run(args, procs: Processes, work: Path) -> dict:
    size = parse_size(args.size)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    src = work / "blob.bin"
    print(f"generating {human_size(size)} of random bytes in {work} ...", file=sys.stderr)
    write_random_file(src, size)
    data = work / "data"
    yard_dir = work / "yardstick"
    yard_dir.mkdir()
    daemon, url = start_daemon(procs, data, work / "daemon.log")
    yport = free_port()
    yard = procs.start([sys.executable, str(Path(__file__).resolve()), "--yardstick-server", str(yport),
                        str(yard_dir)], work / "yardstick.log")
    wait_http(f"http://127.0.0.1:{yport}/healthz", yard, log=work / "yardstick.log")
    ctx = {"src": src, "work": work, "data": data, "yard_dir": yard_dir,
           "urls": {"storaged": url, "yardstick": f"http://127.0.0.1:{yport}"},
           "pids": {"storaged": daemon.pid, "yardstick": yard.pid}}
    res: dict = {}
    if "upload" in parts:
        print("upload ...", file=sys.stderr)
        res["upload"] = await bench_upload(ctx, args.repeat)
    if "download" in parts:
        print("download ...", file=sys.stderr)
        res["download"] = await bench_download(ctx, args.repeat, procs)
    if "lag" in parts:
        print("event-loop lag ...", file=sys.stderr)
        res["lag"] = await bench_lag(ctx)
    procs.stop(daemon)
    procs.stop(yard)
    if "rss" in parts:
        print("peak RSS ...", file=sys.stderr)
        res["rss"] = await bench_rss(ctx, procs, 2 * size)
    return res


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--yardstick-server":
        yardstick_server(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="upload/download file size; each of the 4 lag uploads; "
                    "RSS uses twice this (default 1G; e.g. 256M for a reduced run)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each upload/download measurement (median)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {','.join(PARTS)}")
    ap.add_argument("--timeout", type=float, default=1200, help="hard time limit of the whole bench, seconds")
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    ap.add_argument("--note", action="append", default=[], help="a finding to add under the figures")
    args = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed (apt-get install curl)")
    procs = Processes()
    started = time.monotonic()
    try:
        with time_limit(args.timeout), disk_tempdir("storaged-files-bench-") as work:
            try:
                res = asyncio.run(run(args, procs, work))
            finally:
                procs.stop_all()
    except BenchTimeout as exc:
        print(f"files_bench: {exc}", file=sys.stderr)
        return 1
    res["notes"] = args.note
    text = render(args, res, time.monotonic() - started)
    from common import publish

    publish(SECTION, text, no_write=not args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
