"""Benchmark: replication to the storage tier vs a plain boto3 loop to the same engine.

The engine is a one-node OpenStack Swift with its S3 API on loopback (the one the
tests use, tests/swift_engine.py), on the same machine as everything else.

* yardstick: ``boto3`` ``upload_file`` (its default transfer settings: multipart
  above 8 MiB, 10 threads per file) of every file, one after the other, into a
  fresh bucket;
* storaged: the same files stored as objects in a data root, then a daemon with
  ``tier_bucket`` set to a fresh bucket: the time from its start (``/healthz``
  answering) until ``/tier`` shows every object replicated and verified (the walk
  that queues them, HEADs, PUTs/parts with Content-MD5, the read-back HEAD,
  ``meta.json`` and ``remote.json`` included).

Goal: storaged's throughput >= 0.8x the yardstick's.  ``--total`` bytes of mixed
sizes (48 MiB down to 30 KiB: a few recordings, clips and many small files).

* the daemon's own upload and download while it replicates: ``curl -T`` of a
  ``--load-size`` file to ``POST /upload`` and ``curl -o /dev/null`` of it from
  ``/download``, on a daemon without a tier and on one replicating the
  ``--total`` backlog at the same time.  Goal: no regression beyond 10 %.

    .venv/bin/python bench/tier.py                      # full scale: 1 GiB, 2 runs each (median)
    .venv/bin/python bench/tier.py --total 256M --runs 1
    .venv/bin/python bench/tier.py --write              # also write the section into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    MiB,
    Processes,
    disk_tempdir,
    human_size,
    machine_note,
    mb_s,
    median,
    parse_size,
    publish,
    start_daemon,
    time_limit,
    write_random_file,
)
from tests.swift_engine import ACCESS_KEY, REGION, SECRET_KEY, SwiftEngine  # noqa: E402

HEADING = "Storage tier: replication vs a plain boto3 loop"
KiB = 1024
PATTERN = [48 * MiB, 12 * MiB, 3 * MiB, 1 * MiB, 1 * MiB, 300 * KiB, 300 * KiB, 100 * KiB, 100 * KiB, 100 * KiB,
           30 * KiB, 30 * KiB, 30 * KiB, 30 * KiB, 30 * KiB]


def make_files(where: Path, total: int) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    files, made, i = [], 0, 0
    while made < total:
        size = min(PATTERN[i % len(PATTERN)], total - made)
        path = where / f"f{i:05d}.bin"
        write_random_file(path, size)
        files.append(path)
        made += size
        i += 1
    return files


def store(files: list[Path], data_dir: Path) -> None:
    from storaged.store.layout import Layout
    from storaged.store.objects import ObjectStore

    layout = Layout(data_dir)
    layout.ensure()
    objects = ObjectStore(layout, max_size=1 << 40)
    for path in files:
        copy = layout.tmp / f"bench-{path.name}"
        shutil.copyfile(path, copy)
        objects.put_file_blocking(copy, path.name)


def reset_tier_state(data_dir: Path) -> None:
    shutil.rmtree(data_dir / "tier", ignore_errors=True)
    for meta in data_dir.glob("??/*/remote.json"):
        meta.unlink()


def yardstick(engine: SwiftEngine, bucket: str, files: list[Path]) -> float:
    s3 = engine.client()
    s3.create_bucket(Bucket=bucket)
    began = time.monotonic()
    for path in files:
        s3.upload_file(str(path), bucket, f"plain/{path.name}")
    return time.monotonic() - began


def replicate(engine: SwiftEngine, bucket: str, data_dir: Path, count: int, procs: Processes, log: Path) -> float:
    engine.client().create_bucket(Bucket=bucket)
    reset_tier_state(data_dir)
    proc, url = start_daemon(procs, data_dir, log, "--tier-bucket", bucket, "--tier-endpoint", engine.endpoint,
                             "--tier-region", REGION, "--tier-box", "bench", "--tier-scan-interval", "1h",
                             "--janitor-interval", "0")
    began = time.monotonic()
    try:
        while True:
            with urllib.request.urlopen(url + "/tier", timeout=30) as resp:
                status = json.loads(resp.read())
            if status["items"] >= count and status["backlog"] == 0:
                elapsed = time.monotonic() - began
                break
            if status["failures"]:
                raise RuntimeError(f"replication failed: {status['last_error']}")
            time.sleep(0.2)
    finally:
        procs.stop(proc)
    return elapsed


def curl_upload_download(url: str, path: Path) -> tuple[float, float]:
    import subprocess

    began = time.monotonic()
    out = subprocess.run(["curl", "-sS", "--fail", "-T", str(path), f"{url}/upload?name={path.name}"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    up = time.monotonic() - began
    file_id = json.loads(out)["file_id"]
    began = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", f"{url}/download/{file_id}"], check=True,
                   timeout=600)
    return up, time.monotonic() - began


def load_side(engine: SwiftEngine | None, bucket: str, data_dir: Path, loads: list[Path], procs: Processes,
              log: Path, bandwidth: str = "0") -> tuple[list[float], list[float], int]:
    """(upload seconds, download seconds, tier backlog left at the end) for each load file."""
    extra = ["--janitor-interval", "0"]
    if engine is not None:
        engine.client().create_bucket(Bucket=bucket)
        reset_tier_state(data_dir)
        extra += ["--tier-bucket", bucket, "--tier-endpoint", engine.endpoint, "--tier-region", REGION,
                  "--tier-box", "bench", "--tier-scan-interval", "1h", "--tier-bandwidth", bandwidth]
    proc, url = start_daemon(procs, data_dir, log, *extra)
    ups, downs = [], []
    try:
        for path in loads:
            up, down = curl_upload_download(url, path)
            ups.append(up)
            downs.append(down)
        with urllib.request.urlopen(url + "/tier", timeout=30) as resp:
            backlog = json.loads(resp.read()).get("backlog", 0)
    finally:
        procs.stop(proc)
    return ups, downs, backlog


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total", default="1G", help="bytes of mixed objects (default 1G)")
    ap.add_argument("--runs", type=int, default=2, help="runs of each side (median)")
    ap.add_argument("--load-size", default="256M", help="size of each upload/download of the load part")
    ap.add_argument("--load-runs", type=int, default=3, help="uploads+downloads on each side of the load part")
    ap.add_argument("--load-bandwidth", default="0", help="tier_bandwidth of the replicating daemon in the load part")
    ap.add_argument("--parts", default="replication,load", help="comma-separated: replication, load")
    ap.add_argument("--engine-nice", type=int, default=10,
                    help="in the load part the engine runs niced by this much: on a box it is another machine, "
                         "here it shares the cores")
    ap.add_argument("--timeout", type=float, default=3600, help="hard time limit of the whole bench, seconds")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    total = parse_size(args.total)
    # The daemons' credentials for the test engine (tempauth's test:tester).
    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    procs = Processes()
    with time_limit(args.timeout), disk_tempdir("storaged-bench-tier-") as tmp:
        engine = SwiftEngine(tmp / "swift")
        try:
            engine.start()
            files = make_files(tmp / "files", total)
            size = sum(p.stat().st_size for p in files)
            store(files, tmp / "data")
            plain, ours = [], []
            parts = set(args.parts.split(","))
            text = ""
            if "replication" in parts:
                for run in range(args.runs):
                    plain.append(yardstick(engine, f"plain-{run}", files))
                    ours.append(replicate(engine, f"tier-{run}", tmp / "data", len(files), procs,
                                          tmp / "daemon.log"))
                    print(f"run {run + 1}: boto3 loop {plain[-1]:.1f}s, storaged {ours[-1]:.1f}s", file=sys.stderr)
                p, o = median(plain), median(ours)
                text += (
                    f"`.venv/bin/python bench/tier.py --total {args.total} --runs {args.runs}`: {len(files)} objects, "
                    f"{human_size(size)} of mixed sizes (48 MiB down to 30 KiB), to a one-node Swift (S3 API) on the "
                    f"same machine; median of {args.runs} run(s) each.\n\n"
                    "| what | time | throughput | vs yardstick |\n| --- | --- | --- | --- |\n"
                    f"| boto3 `upload_file` loop (yardstick) | {p:.1f} s | {mb_s(size, p):.1f} MB/s | 1.00x |\n"
                    f"| storaged replication (walk, dedupe HEAD, PUT/parts with Content-MD5, ETag check, meta.json, "
                    f"remote.json) | {o:.1f} s | {mb_s(size, o):.1f} MB/s | {p / o:.2f}x (goal >= 0.8x) |\n\n"
                    f"Defaults: `tier_concurrency` 4, `tier_part_size` 16M.\n\n"
                )
            if "load" in parts:
                load_size = parse_size(args.load_size)
                loads = []
                for i in range(args.load_runs * 2):
                    loads.append(tmp / "load" / f"load{i}.bin")
                    loads[-1].parent.mkdir(exist_ok=True)
                    write_random_file(loads[-1], load_size)
                if args.engine_nice:
                    engine.stop()
                    engine.start(nice=args.engine_nice)
                # Tier off: its own data root (no backlog); tier on: the data root holding the --total backlog.
                off_up, off_down, _ = load_side(None, "", tmp / "data-off", loads[:args.load_runs], procs,
                                                tmp / "daemon-off.log")
                on_up, on_down, backlog = load_side(engine, "tier-load", tmp / "data", loads[args.load_runs:], procs,
                                                    tmp / "daemon-on.log", args.load_bandwidth)
                text += (
                    f"`.venv/bin/python bench/tier.py --parts load --total {args.total} --load-size {args.load_size} "
                    f"--load-runs {args.load_runs} --load-bandwidth {args.load_bandwidth}`: the daemon's own traffic (`curl -T` of a {human_size(load_size)} "
                    f"file to `/upload`, then `curl -o /dev/null` from `/download`; median of {args.load_runs}), "
                    f"without a tier and while replicating a {human_size(size)} backlog (`tier_bandwidth` "
                    f"{args.load_bandwidth}; {backlog} item(s) still "
                    f"queued when the last download ended). The engine shares the 2 cores, niced by "
                    f"{args.engine_nice} (on a box it is another machine).\n\n"
                    "| what | tier off | replicating | ratio (goal >= 0.9x) |\n| --- | --- | --- | --- |\n"
                    f"| upload | {mb_s(load_size, median(off_up)):.1f} MB/s | {mb_s(load_size, median(on_up)):.1f} MB/s "
                    f"| {median(off_up) / median(on_up):.2f}x |\n"
                    f"| download | {mb_s(load_size, median(off_down)):.1f} MB/s | "
                    f"{mb_s(load_size, median(on_down)):.1f} MB/s | {median(off_down) / median(on_down):.2f}x |\n\n"
                )
        finally:
            procs.stop_all()
            engine.stop()
    text += f"{machine_note()}.\n"
    publish(HEADING, text, no_write=not args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
