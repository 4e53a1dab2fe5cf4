"""Benchmark: analyses (POST /analyse, GET /results) of storaged against its yardsticks.

* status polls: ``GET /results/<file>/<analysis>`` on a finished analysis, requests/s
  with N concurrent connections (``wrk`` from Debian; an aiohttp client if wrk
  cannot be had) vs an aiohttp hello-world handler (this file, ``--hello-server``,
  its own process) under the same tool.  Goal ≥ 0.6× (issue 14).
* job start latency: ``POST /analyse`` (dummy, distinct ``seconds`` each time, so each
  is a new job) until ``GET /results`` says "running" (the daemon has started the
  worker) and until it shows a progress value (the worker executes the job),
  polling every 5 ms; ~30 jobs, median and p90.  Goal < 100 ms median.  Also
  POST → done for dummy ``seconds`` ≈ 0.
* clip: 30 s stream-copy clips out of a ``--video-seconds`` (default 1 h) 320x240
  H.264 file, end to end through HTTP (POST → 200 done, polling every 10 ms) vs the
  plain ffmpeg command the analysis runs, on the same stored file; 5 rounds at
  distinct start times, medians.  Goal ≤ 1.2×.

    .venv/bin/python bench/analyses_bench.py                       # full scale
    .venv/bin/python bench/analyses_bench.py --video-seconds 600   # reduced scale
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    BenchTimeout,
    Processes,
    disk_tempdir,
    ensure_tool,
    free_port,
    machine_note,
    median,
    percentile,
    start_daemon,
    time_limit,
    wait_http,
    write_random_file,
)

SECTION = "analyses"
PARTS = ("polls", "latency", "clip")
POLL_GOAL = 0.6  # status polls vs hello world
CLIP_SECONDS = 30
CHUNK_SECONDS = 300


def hello_server(port: int, job_dir: Path) -> None:
    """The yardstick of small GETs: an aiohttp hello-world handler (blocking).  Separate process.

    Two more routes split the gap between it and storaged: ``/thread`` adds one
    ``asyncio.to_thread`` hop (of nothing), ``/state`` reads the same finished job's
    state off its files in a thread (``storaged.jobs.state.read_state``) and answers
    its results, i.e. the status poll's own work without storaged's routing,
    middlewares and path building; ``/state-inline`` does the same reads on the
    event loop, without the thread hop.
    """
    from aiohttp import web

    from storaged.jobs.state import read_state

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def thread(request: web.Request) -> web.Response:
        await asyncio.to_thread(lambda: None)
        return web.json_response({"hello": "world"})

    async def state(request: web.Request) -> web.Response:
        st = await asyncio.to_thread(read_state, job_dir)
        return web.json_response({k: v for k, v in st.results.items() if k != "status"})

    async def state_inline(request: web.Request) -> web.Response:
        st = read_state(job_dir)  # on the loop: two small file reads, no thread hop
        return web.json_response({k: v for k, v in st.results.items() if k != "status"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/thread", thread)
    app.router.add_get("/state", state)
    app.router.add_get("/state-inline", state_inline)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- status polls -----------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_time(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(wrk: str, url: str, clients: int, seconds: float) -> dict:
    threads = min(2, clients)
    out = subprocess.run([wrk, f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    lat = {p: _wrk_time(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M)}
    return {"rps": rps, "non2xx": int(bad.group(1)) if bad else 0, "errors": errors.group(0) if errors else "",
            "p50": lat.get("50"), "p99": lat.get("99")}


async def run_aiohttp_load(url: str, clients: int, seconds: float) -> dict:
    """Fallback load generator: ``clients`` keep-alive connections, each GETting in a loop."""
    import aiohttp

    count = bad = 0
    lats: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(http) -> None:
        nonlocal count, bad
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
                bad += resp.status != 200
            lats.append(time.perf_counter() - t0)
            count += 1

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        await asyncio.gather(*(one(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"rps": count / wall, "non2xx": bad, "errors": "", "p50": percentile(lats, 50),
            "p99": percentile(lats, 99)}


async def bench_polls(ctx: dict, args, procs: Processes) -> dict:
    wrk = ensure_tool("wrk", "wrk")
    tool = "wrk" if wrk else "aiohttp client"
    hport = free_port()
    job_dir = ctx["data"] / ctx["file_id"][:2] / ctx["file_id"][2:] / "analysis" / ctx["done_aid"]
    hello = procs.start([sys.executable, str(Path(__file__).resolve()), "--hello-server", str(hport),
                         str(job_dir)], ctx["work"] / "hello.log", cwd=ctx["root"])
    base = f"http://127.0.0.1:{hport}"
    hello_url = base + "/hello"
    wait_http(base + "/state", hello, log=ctx["work"] / "hello.log")
    clients_list = [int(c) for c in args.clients.split(",")]
    rows: dict = {}

    async def load(url: str, clients: int) -> dict:
        if wrk:
            return await asyncio.to_thread(run_wrk, wrk, url, clients, args.poll_seconds)
        return await run_aiohttp_load(url, clients, args.poll_seconds)

    try:
        for variant, extra in (("default", ()), ("--access-log", ("--access-log",))):
            daemon, url = start_daemon(procs, ctx["data"], ctx["work"] / "daemon.log", *extra)
            try:
                status_url = f"{url}/results/{ctx['file_id']}/{ctx['done_aid']}"
                for clients in clients_list:
                    targets = [("storaged", status_url)]
                    if variant == "default":  # the hello server is the same in both variants
                        targets += [("hello", hello_url), ("thread", base + "/thread"), ("state", base + "/state"),
                                    ("inline", base + "/state-inline")]
                    for who, target in targets:
                        r = await load(target, clients)
                        if r["non2xx"]:
                            raise RuntimeError(f"{who}: {r['non2xx']} non-2xx answers during the load")
                        rows[(variant, who, clients)] = r
                        print(f"  polls {variant:24s} {who:8s} c={clients:3d}: {r['rps']:8.0f} req/s", file=sys.stderr)
            finally:
                procs.stop(daemon)
    finally:
        procs.stop(hello)
    return {"tool": tool, "rows": rows, "clients": clients_list, "seconds": args.poll_seconds}


# -- job latency ----------------------------------------------------------------------------


async def post_json(http, url: str, body: dict) -> dict:
    async with http.post(url, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"POST {url} answered {resp.status}: {data}")
        return data


async def submit_and_watch(http, url: str, file_id: str, analysis: str, job_args: dict, *, interval: float,
                           until: str, timeout: float = 120) -> dict:
    """POST /analyse, then poll GET /results; answer the times (s since the POST) of what was seen."""
    t0 = time.perf_counter()
    aid = (await post_json(http, f"{url}/analyse", {"file_id": file_id, "analysis": analysis,
                                                      "args": job_args}))["analysis_id"]
    seen = {"aid": aid, "posted": time.perf_counter() - t0}
    while True:
        async with http.get(f"{url}/results/{file_id}/{aid}") as resp:
            status = resp.status
            # 202 has an empty body; the state and progress are in X-Job-Status/X-Job-Progress.
            body = ({"status": resp.headers.get("X-Job-Status"), "progress": resp.headers.get("X-Job-Progress")}
                    if status == 202 else await resp.json(content_type=None))
        now = time.perf_counter() - t0
        if status == 200:
            seen.setdefault("running", now)
            seen.setdefault("executing", now)
            seen["done"] = now
            seen["result"] = body
            return seen
        if status != 202:
            raise RuntimeError(f"{analysis} {job_args}: {status} {body}")
        if body["status"] == "running":
            seen.setdefault("running", now)
            if body.get("progress") is not None:
                seen.setdefault("executing", now)
        if until in seen:
            return seen
        if now > timeout:
            raise RuntimeError(f"{analysis} {job_args} still {body['status']} after {timeout}s")
        await asyncio.sleep(interval)


async def bench_latency(ctx: dict, args, procs: Processes) -> dict:
    import aiohttp

    daemon, url = start_daemon(procs, ctx["data"], ctx["work"] / "daemon.log")
    try:
        start, done = [], []
        async with aiohttp.ClientSession() as http:
            for i in range(args.jobs):
                seen = await submit_and_watch(http, url, ctx["file_id"], "dummy", {"seconds": 5 + i / 1000},
                                              interval=0.005, until="executing", timeout=60)
                start.append(seen)
                async with http.delete(f"{url}/results/{ctx['file_id']}/{seen['aid']}") as resp:
                    assert resp.status == 200, await resp.text()
            for i in range(args.jobs):
                seen = await submit_and_watch(http, url, ctx["file_id"], "dummy", {"seconds": (i + 1) * 1e-6},
                                              interval=0.005, until="done", timeout=60)
                done.append(seen)
        print(f"  start: running median {median([s['running'] for s in start]) * 1e3:.0f} ms, "
              f"done median {median([s['done'] for s in done]) * 1e3:.0f} ms", file=sys.stderr)
        return {"start": start, "done": done}
    finally:
        procs.stop(daemon)


# -- clip ------------------------------------------------------------------------------------


def ffmpeg(*argv: str, timeout: float = 900) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *argv], check=True,
                   timeout=timeout, stdin=subprocess.DEVNULL)


def make_video(work: Path, seconds: int) -> Path:
    """A ``seconds`` long 320x240 25 fps H.264 mp4 (ultrafast, keyframe every 50 frames).

    Encoded in 5-minute pieces joined by stream copy (the concat demuxer), which
    is many times faster than encoding the whole hour; a piece is a whole number
    of GOPs, so the keyframe cadence is the same as one long encode.
    """
    out = work / "capture.mp4"
    chunk = min(seconds, CHUNK_SECONDS)
    piece = work / "piece.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={chunk}", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p", str(piece))
    full, rest = divmod(seconds, chunk)
    lines = [f"file '{piece}'\n"] * full
    if rest:
        tail = work / "tail.mp4"
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={rest}", "-c:v", "libx264",
               "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p", str(tail))
        lines.append(f"file '{tail}'\n")
    (work / "pieces.txt").write_text("".join(lines))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(work / "pieces.txt"), "-c", "copy", str(out))
    for p in (piece, work / "tail.mp4", work / "pieces.txt"):
        p.unlink(missing_ok=True)
    return out


def plain_clip_argv(src: Path, start: float, out: Path) -> list[str]:
    """The command the clip analysis runs, without storaged around it."""
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-ss", f"{start:.6f}",
            "-t", f"{CLIP_SECONDS:.6f}", "-i", str(src), "-map", "0:v?", "-map", "0:a?", "-c", "copy",
            "-avoid_negative_ts", "make_zero", "-movflags", "+faststart", str(out)]


def timed(argv: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=300, stdin=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


async def bench_clip(ctx: dict, args, procs: Processes) -> dict:
    import aiohttp

    work: Path = ctx["work"]
    t0 = time.perf_counter()
    video = make_video(work, args.video_seconds)
    made = time.perf_counter() - t0
    daemon, url = start_daemon(procs, ctx["data"], work / "daemon.log")
    try:
        async with aiohttp.ClientSession() as http:
            with open(video, "rb") as fh:
                async with http.post(f"{url}/upload?name=capture.mp4", data=fh) as resp:
                    meta = await resp.json()
                    assert resp.status == 200, meta
        file_id = meta["file_id"]
        stored = ctx["data"] / file_id[:2] / file_id[2:] / "the_file"
        video.unlink()
        rounds = args.rounds
        starts = [round((k + 1) * (args.video_seconds - CLIP_SECONDS) / (rounds + 1) + 0.37, 3)
                  for k in range(rounds)]
        ours, plain, seen_all = [], [], []
        out = work / "plain.mp4"
        async with aiohttp.ClientSession() as http:
            for k, start in enumerate(starts):
                order = ("storaged", "plain") if k % 2 == 0 else ("plain", "storaged")
                for who in order:
                    if who == "plain":
                        plain.append(await asyncio.to_thread(timed, plain_clip_argv(stored, start, out)))
                        out.unlink()
                    else:
                        seen = await submit_and_watch(http, url, file_id, "clip",
                                                      {"start": start, "duration": CLIP_SECONDS},
                                                      interval=0.010, until="done", timeout=300)
                        ours.append(seen["done"])
                        seen_all.append(seen)
                print(f"  clip at {start:8.2f}s: storaged {ours[-1] * 1e3:6.0f} ms, plain {plain[-1] * 1e3:6.0f} ms",
                      file=sys.stderr)
        # Where the time goes: the pieces of a job, each timed on its own.
        reps = 5
        probe = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(stored)]
        preload = ("import importlib, storaged.jobs.worker\n"
                   "try:\n    from storaged.jobs.zygote import PRELOAD\nexcept ImportError:\n    PRELOAD = ()\n"
                   "for m in PRELOAD:\n    importlib.import_module(m)\n")
        parts = {
            "python": median([timed([sys.executable, "-c", "pass"]) for _ in range(reps)]),
            "imports": median([timed([sys.executable, "-c", preload], cwd=ctx["root"]) for _ in range(reps)]),
            "ffprobe": median([timed(probe) for _ in range(reps)]),
        }
        cached_probe = (stored.parent / "probe.json").exists()
        zygote = Path(ctx["root"], "storaged", "jobs", "zygote.py").exists()
        return {"starts": starts, "ours": ours, "plain": plain, "seen": seen_all, "made": made,
                "size": meta["size"], "parts": parts, "cached_probe": cached_probe, "zygote": zygote}
    finally:
        procs.stop(daemon)


# -- report ------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 10 else f"{x:.1f} s"


def render(args, res: dict, elapsed: float) -> str:
    defaults = {"video_seconds": 3600, "jobs": 30, "rounds": 5, "clients": "8,32", "poll_seconds": 10.0,
                "only": ",".join(PARTS)}
    flags = "".join(f" --{k.replace('_', '-')} {getattr(args, k):g}" if isinstance(v, (int, float))
                    else f" --{k.replace('_', '-')} {getattr(args, k)}"
                    for k, v in defaults.items() if getattr(args, k) != v)
    cmd = ".venv/bin/python bench/analyses_bench.py" + flags
    reduced = args.video_seconds < 3600 or args.jobs < 30 or args.rounds < 5
    out = [f"Command: `{cmd}` (took {elapsed:.0f} s).  "
           + ("**Reduced scale** (see the flags), because the machine is shared right now; the full-scale "
              "command is `.venv/bin/python bench/analyses_bench.py`." if reduced else "Full scale."),
           "",
           f"Machine: {machine_note()}.  Other test suites and benches were running at the same time, so "
           "absolute figures are noisy; storaged and its yardstick ran interleaved.  Loopback only; a real "
           "`storaged serve` (default settings unless said) on a fresh data dir in a disk-backed temp dir.",
           ""]
    if "polls" in res:
        p = res["polls"]
        out += ["### Status polls",
                "",
                f"`GET /results/<file>/<analysis>` of a finished dummy analysis (200 + results JSON) vs an aiohttp "
                f"hello-world handler (`analyses_bench.py --hello-server`, its own process, `json_response`, no "
                f"access log), both loaded by {p['tool']} for {p['seconds']:g} s per row "
                f"({'2 threads' if p['tool'] == 'wrk' else 'one process'}; N keep-alive connections).  The daemon "
                "runs with its default settings (no access log) and, for comparison, with `--access-log` (to a file).",
                "",
                "| connections | storaged req/s (default) | storaged req/s (`--access-log`) | hello-world "
                f"req/s | ratio, default settings (goal ≥ {POLL_GOAL}×) | ratio, access log on | p50 / p99 latency "
                "storaged vs hello |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        rows = p["rows"]
        for c in p["clients"]:
            on = rows[("default", "storaged", c)]
            off = rows[("--access-log", "storaged", c)]
            hello = rows[("default", "hello", c)]
            r_on, r_off = on["rps"] / hello["rps"], off["rps"] / hello["rps"]
            out.append(f"| {c} | {on['rps']:.0f} | {off['rps']:.0f} | {hello['rps']:.0f} | **{r_on:.2f}×** "
                       f"({'meets' if r_on >= POLL_GOAL else '**misses**'}) | {r_off:.2f}× | {ms(on['p50'])} / "
                       f"{ms(on['p99'])} vs {ms(hello['p50'])} / {ms(hello['p99'])} |")
        out += ["",
                "Where the gap comes from — the same hello-world server with the status poll's pieces added "
                "(requests/s, same tool and connections):",
                "",
                "| connections | hello-world | + one `asyncio.to_thread` hop | + `read_state` of the same job in "
                "that thread (the poll's own work) | the same `read_state` on the event loop, no thread | storaged "
                "(default) |",
                "| --- | --- | --- | --- | --- | --- |"]
        for c in p["clients"]:
            out.append(f"| {c} | " + " | ".join(
                f"{rows[key]['rps']:.0f}" for key in (("default", "hello", c),
                                                       ("default", "thread", c),
                                                       ("default", "state", c),
                                                       ("default", "inline", c),
                                                       ("default", "storaged", c))) + " |")
        out.append("")
    if "latency" in res:
        lat = res["latency"]
        run = [s["running"] for s in lat["start"]]
        exe = [s["executing"] for s in lat["start"]]
        post = [s["posted"] for s in lat["start"]]
        done = [s["done"] for s in lat["done"]]
        m = median(run)
        out += ["### Job start latency",
                "",
                f"{len(run)} dummy jobs one after the other (`seconds` = 5 + i/1000, so each is a new job; deleted "
                "once seen executing), then "
                f"{len(done)} with `seconds` ≈ 0 (i × 1e-6).  Times from sending `POST /analyse`; `GET /results` "
                "polled every 5 ms (so figures carry up to ~5 ms of polling granularity).",
                "",
                "| from POST to … | median | p90 | max |",
                "| --- | --- | --- | --- |",
                f"| the POST's answer | {ms(median(post))} | {ms(percentile(post, 90))} | {ms(max(post))} |",
                f"| status \"running\" (the daemon has started the worker, `inrun.pid` written) | **{ms(m)}** | "
                f"{ms(percentile(run, 90))} | {ms(max(run))} |",
                f"| first progress value (the worker executes the job) | {ms(median(exe))} | "
                f"{ms(percentile(exe, 90))} | {ms(max(exe))} |",
                f"| 200 done, dummy `seconds` ≈ 0 | {ms(median(done))} | {ms(percentile(done, 90))} | "
                f"{ms(max(done))} |",
                "",
                f"Goal < 100 ms median to running: {'meets the goal' if m < 0.1 else '**misses the goal**'}.",
                ""]
    if "clip" in res:
        c = res["clip"]
        ours, plain = median(c["ours"]), median(c["plain"])
        ratio = ours / plain
        run = median([s["running"] for s in c["seen"]])
        out += ["### Clip (stream copy)",
                "",
                f"A {args.video_seconds / 3600:g} h 320x240 25 fps H.264 mp4 (ultrafast, `-g 50`, "
                f"{c['size'] / 1e6:.0f} MB; made in {c['made']:.0f} s by encoding 5-minute pieces joined with the "
                f"concat demuxer), uploaded once.  {len(c['ours'])} rounds at distinct start times "
                f"({', '.join(f'{s:g}' for s in c['starts'])} s), 30 s each.  storaged: `POST /analyse` "
                "`clip {start, duration: 30}` → `GET /results` 200 (polled every 10 ms).  Plain: `ffmpeg -ss S -t 30 "
                "-i <the stored file> -map 0:v? -map 0:a? -c copy -avoid_negative_ts make_zero -movflags +faststart "
                "out.mp4`.",
                "",
                "| what | median wall time | runs |",
                "| --- | --- | --- |",
                f"| storaged, POST → done | {ms(ours)} | {', '.join(ms(x) for x in c['ours'])} |",
                f"| plain ffmpeg | {ms(plain)} | {', '.join(ms(x) for x in c['plain'])} |",
                "",
                f"Ratio: **{ratio:.2f}×** (goal ≤ 1.2×: {'meets the goal' if ratio <= 1.2 else '**misses the goal**'}"
                ").",
                "",
                "Where storaged's time goes.  Measured in the runs above (medians): POST → status \"running\" "
                f"{ms(run)}, \"running\" → done {ms(median([s['done'] - s['running'] for s in c['seen']]))}; "
                f"first run {ms(c['ours'][0])} vs the median of the others "
                f"{ms(median(c['ours'][1:])) if len(c['ours']) > 1 else 'n/a'}.  Pieces timed on their own "
                "(median of 5):",
                "",
                "| piece | time | paid by |",
                "| --- | --- | --- |",
                f"| `python -c pass` (interpreter start-up) | {ms(c['parts']['python'])} | "
                + ("the first job after the daemon starts (the zygote) |" if c["zygote"] else "every job |"),
                f"| start-up + imports of the worker and job modules | {ms(c['parts']['imports'])} | "
                + ("the same (the zygote imports them once; jobs are forked from it) |" if c["zygote"]
                   else "every job |"),
                f"| ffprobe of the input (the clip asks for the duration first) | {ms(c['parts']['ffprobe'])} | "
                + ("the first analysis of a file (cached beside it as `probe.json`) |" if c["cached_probe"]
                   else "every job |"),
                f"| the ffmpeg cut itself (the plain figure) | {ms(plain)} | every job |",
                ""]
    if res.get("notes"):
        out += ["### Findings", "", *res["notes"], ""]
    return "\n".join(out)


async def run(args, procs: Processes, work: Path) -> dict:
    import aiohttp

    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        raise SystemExit(f"unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    ctx: dict = {"work": work, "data": work / "data", "root": str(Path(__file__).resolve().parent.parent)}
    res: dict = {}
    if "polls" in parts or "latency" in parts:
        tiny = work / "tiny.bin"
        write_random_file(tiny, 4096)
        daemon, url = start_daemon(procs, ctx["data"], work / "daemon.log")
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/upload?name=tiny.bin", data=tiny.read_bytes()) as resp:
                    ctx["file_id"] = (await resp.json())["file_id"]
                seen = await submit_and_watch(http, url, ctx["file_id"], "dummy", {"seconds": 0},
                                              interval=0.01, until="done")
                ctx["done_aid"] = seen["aid"]
        finally:
            procs.stop(daemon)
    if "polls" in parts:
        print("status polls ...", file=sys.stderr)
        res["polls"] = await bench_polls(ctx, args, procs)
    if "latency" in parts:
        print("job start latency ...", file=sys.stderr)
        res["latency"] = await bench_latency(ctx, args, procs)
    if "clip" in parts:
        print(f"clip (making a {args.video_seconds} s video) ...", file=sys.stderr)
        res["clip"] = await bench_clip(ctx, args, procs)
    return res


def stop_workers(data: Path) -> None:
    """Stop the detached job workers this bench's daemons left running (by their pid files: pid, boot
    id and start time must match, so nothing else is ever signalled)."""
    from storaged.supervise.process import read_pidfile, terminate_group

    for pidfile in data.glob("*/*/analysis/*/inrun.pid"):
        identity = read_pidfile(pidfile)
        if identity is not None and identity.alive():
            terminate_group(identity, 5.0)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--hello-server":
        hello_server(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video-seconds", type=int, default=3600, help="length of the clip input (default 3600)")
    ap.add_argument("--rounds", type=int, default=5, help="clip rounds (distinct start times)")
    ap.add_argument("--jobs", type=int, default=30, help="jobs for the start-latency figures")
    ap.add_argument("--clients", default="8,32", help="comma-separated connection counts for the status polls")
    ap.add_argument("--poll-seconds", type=float, default=10.0, help="seconds of load per status-poll row")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {','.join(PARTS)}")
    ap.add_argument("--timeout", type=float, default=1200, help="hard time limit of the whole bench, seconds")
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    ap.add_argument("--note", action="append", default=[], help="a finding to add under the figures")
    args = ap.parse_args()
    if args.video_seconds <= CLIP_SECONDS:
        raise SystemExit(f"--video-seconds must be more than {CLIP_SECONDS}")
    procs = Processes()
    started = time.monotonic()
    try:
        with time_limit(args.timeout), disk_tempdir("storaged-analyses-bench-") as work:
            try:
                res = asyncio.run(run(args, procs, work))
            finally:
                procs.stop_all()
                stop_workers(work / "data")
    except BenchTimeout as exc:
        print(f"analyses_bench: {exc}", file=sys.stderr)
        return 1
    res["notes"] = args.note
    text = render(args, res, time.monotonic() - started)
    from common import publish

    publish(SECTION, text, no_write=not args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
