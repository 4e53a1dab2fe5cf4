"""Benchmark: resumable (tus) uploads against POST /upload on the same daemon.

* ingest: one ``--size`` file (default 1 GiB) uploaded with tus in ``--patch`` PATCHes
  (default 64 MiB: creation, then PATCH after PATCH, each fsynced and committed) vs the
  same bytes in one ``POST /upload``, on the same daemon, alternating, ``--rounds`` times
  each (the stored file is deleted between runs so no run is a dedupe).  Both go through
  the same client (``http.client``, 1 MiB sends), so the difference is the server's.
  Goal: tus >= 0.9x the throughput of POST /upload.
* resume after a cut: a PATCH whose connection is reset half-way through a
  ``--patch`` body; then what a client does: HEAD (the offset the daemon kept), and the
  next PATCH from there.  Reported: bytes sent that were not kept (to re-send), the HEAD
  time, and the first 1 MiB PATCH after the cut vs an ordinary one.
* resume after a daemon restart: the same first PATCH after SIGTERM + start, which
  rebuilds the running SHA-256 by reading the bytes so far once.

    .venv/bin/python bench/tus_upload.py                    # full scale: 1 GiB in 64 MiB PATCHes
    .venv/bin/python bench/tus_upload.py --size 256M --write
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import socket
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

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

SECTION = "resumable uploads (tus)"
TUS = {"Tus-Resumable": "1.0.0"}
SEND = MiB


class Range:
    """A file-like view of ``[start, start + length)`` of a file, for http.client bodies."""

    def __init__(self, fh, start: int, length: int) -> None:
        self.fh, self.left = fh, length
        fh.seek(start)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data


def request(base: str, method: str, path: str, body=None, headers=None) -> http.client.HTTPResponse:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600, blocksize=SEND)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


def post_upload(base: str, src: Path) -> tuple[float, str]:
    size = src.stat().st_size
    began = time.perf_counter()
    with open(src, "rb") as fh:
        resp = request(base, "POST", "/upload?name=bench.bin", Range(fh, 0, size),
                       {"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    took = time.perf_counter() - began
    assert resp.status == 200, resp.body
    return took, json.loads(resp.body)["file_id"]


def create(base: str, size: int) -> str:
    resp = request(base, "POST", "/files/", headers={**TUS, "Upload-Length": str(size),
                                                      "Upload-Metadata": "filename YmVuY2guYmlu"})
    assert resp.status == 201, resp.body
    return resp.getheader("Location")


def patch(base: str, url: str, fh, offset: int, length: int) -> http.client.HTTPResponse:
    resp = request(base, "PATCH", url, Range(fh, offset, length),
                   {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
                    "Content-Length": str(length)})
    assert resp.status == 204, (resp.status, resp.body)
    return resp


def head_offset(base: str, url: str) -> int:
    resp = request(base, "HEAD", url, headers=TUS)
    assert resp.status == 200, resp.status
    return int(resp.getheader("Upload-Offset"))


def tus_upload(base: str, src: Path, patch_size: int) -> tuple[float, str]:
    size = src.stat().st_size
    began = time.perf_counter()
    url = create(base, size)
    offset = 0
    with open(src, "rb") as fh:
        while offset < size:
            n = min(patch_size, size - offset)
            resp = patch(base, url, fh, offset, n)
            offset += n
    took = time.perf_counter() - began
    return took, resp.getheader("File-Id")


def delete(base: str, file_id: str) -> None:
    assert request(base, "DELETE", f"/upload/{file_id}").status == 200


def cut_patch(base: str, url: str, fh, offset: int, length: int, send: int) -> None:
    """Send ``send`` of ``length`` body bytes, then reset the connection (a cable pulled)."""
    u = urlsplit(base)
    s = socket.create_connection((u.hostname, u.port))
    head = (f"PATCH {url} HTTP/1.1\r\nHost: {u.hostname}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    s.sendall(head)
    body = Range(fh, offset, send)
    while chunk := body.read(SEND):
        s.sendall(chunk)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def resume_figures(base: str, src: Path, patch_size: int, restart) -> dict:
    size = src.stat().st_size
    url = create(base, size)
    out: dict = {}
    with open(src, "rb") as fh:
        half = size // 2 // patch_size * patch_size  # the cut PATCH starts half-way through the file
        offset = 0
        while offset < half:
            patch(base, url, fh, offset, min(patch_size, half - offset))
            offset = min(half, offset + patch_size)
        length = min(patch_size, size - half)
        sent = length // 2 + 12345
        cut_patch(base, url, fh, half, length, sent)
        began = time.perf_counter()
        kept = head_offset(base, url) - half
        deadline = time.monotonic() + 30
        while kept == 0 and time.monotonic() < deadline:  # the daemon commits what arrived as it sees the reset
            kept = head_offset(base, url) - half
        out["head_s"] = time.perf_counter() - began
        out["sent"], out["kept"] = sent, kept
        offset = half + kept
        t = time.perf_counter()
        patch(base, url, fh, offset, MiB)
        out["first_patch_s"] = time.perf_counter() - t
        offset += MiB
        t = time.perf_counter()
        patch(base, url, fh, offset, MiB)
        out["ordinary_patch_s"] = time.perf_counter() - t
        offset += MiB
        out["restart_offset"] = offset
        restart()
        t = time.perf_counter()
        patch(base, url, fh, offset, MiB)
        out["after_restart_s"] = time.perf_counter() - t
        offset += MiB
        while offset < size:
            n = min(patch_size, size - offset)
            resp = patch(base, url, fh, offset, n)
            offset += n
        out["file_id"] = resp.getheader("File-Id")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes per upload (default 1G)")
    ap.add_argument("--patch", default="64M", help="bytes per tus PATCH (default 64M)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each, alternating (default 3)")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds before the bench gives up")
    ap.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md (otherwise only print them)")
    args = ap.parse_args()
    size, patch_size = parse_size(args.size), parse_size(args.patch)
    procs = Processes()
    with time_limit(args.time_limit), disk_tempdir("tus-bench-") as tmp:
        try:
            src = tmp / "source.bin"
            write_random_file(src, size)
            with open(src, "rb") as fh:
                want = hashlib.file_digest(fh, "sha256").hexdigest()
            data, log = tmp / "data", tmp / "daemon.log"
            proc, base = start_daemon(procs, data, log, "--janitor-interval", "0")
            port = urlsplit(base).port
            post_s, tus_s = [], []
            for _ in range(args.rounds):
                took, fid = post_upload(base, src)
                post_s.append(took)
                delete(base, fid)
                took, fid2 = tus_upload(base, src, patch_size)
                tus_s.append(took)
                assert fid2 == fid == want, (fid, fid2, want)
                delete(base, fid)

            def restart() -> None:
                nonlocal proc
                procs.stop(proc)
                proc, _ = start_daemon(procs, data, log, "--janitor-interval", "0", port=port)

            res = resume_figures(base, src, patch_size, restart)
            assert res["file_id"] == fid, res
        finally:
            procs.stop_all()
    post_med, tus_med = median(post_s), median(tus_s)
    ratio = post_med / tus_med
    lines = [
        f"Command: `.venv/bin/python bench/tus_upload.py --size {args.size} --patch {args.patch} "
        f"--rounds {args.rounds}`. {machine_note()}",
        "",
        f"Load: one client, one upload at a time, {human_size(size)} of random bytes from a file on the "
        f"same disk, loopback, to one daemon (data dir on disk, fsync on).",
        "",
        "| upload of the same bytes | median time | throughput | runs |",
        "| --- | --- | --- | --- |",
        f"| `POST /upload` (one request) | {post_med:.2f} s | {mb_s(size, post_med):.0f} MB/s | "
        + ", ".join(f"{t:.2f}" for t in post_s) + " |",
        f"| tus: creation + {size // patch_size or 1} PATCHes of {human_size(patch_size)} | {tus_med:.2f} s | "
        f"{mb_s(size, tus_med):.0f} MB/s | " + ", ".join(f"{t:.2f}" for t in tus_s) + " |",
        "",
        f"tus / POST /upload throughput: **{ratio:.2f}x** (goal >= 0.9x).",
        "",
        f"Resume after a cut: a {human_size(patch_size)} PATCH reset after {human_size(res['sent'])} of its body. "
        f"The daemon kept {human_size(res['kept'])} of it (fsynced and committed as it saw the reset), so the "
        f"client re-sends {human_size(res['sent'] - res['kept'])}. HEAD answered the kept offset "
        f"{res['head_s'] * 1000:.1f} ms after the reset; the first 1 MiB PATCH from there took "
        f"{res['first_patch_s'] * 1000:.1f} ms (an ordinary one: {res['ordinary_patch_s'] * 1000:.1f} ms): "
        "the running hash was still in memory.",
        "",
        f"Resume after a daemon restart (SIGTERM, start): the first 1 MiB PATCH at offset "
        f"{human_size(res['restart_offset'])} took {res['after_restart_s'] * 1000:.0f} ms, which includes "
        f"reading those {human_size(res['restart_offset'])} once to rebuild the running SHA-256.",
    ]
    publish(SECTION, "\n".join(lines), no_write=not args.write)


if __name__ == "__main__":
    main()
