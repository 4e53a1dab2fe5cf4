"""Every file route as RFC 9110 says, checked with the clients people use (curl, wget, ffmpeg)
against a real daemon: resume, single and multiple ranges, If-Range (both forms), HEAD,
conditional requests, and access-log byte counts for sendfile."""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Daemon, ffprobe, make_video, wait_until_sync

AID = "ab" * 20


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One daemon with the same video reachable through every file route."""
    root = tmp_path_factory.mktemp("http-files")
    video = make_video(root / "clip.mp4", seconds=10, size="320x240")
    data = root / "data"
    data.mkdir()
    d = Daemon(data, "--access-log", "true")
    d.start()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{d.url}/upload?name=clip.mp4", data=video.read_bytes(),
                                                           method="POST")) as r:
            meta = json.load(r)
        fid = meta["file_id"]
        obj = data / fid[:2] / fid[2:]
        stored = json.loads((obj / "meta.json").read_text())["stored_name"]
        # Files other families write, planted where they would: an analysis output, a capture, a segment.
        (obj / "analysis" / AID).mkdir(parents=True)
        (obj / "analysis" / AID / "clip.mp4").write_bytes(video.read_bytes())
        (data / "shared" / "captures").mkdir(parents=True, exist_ok=True)
        (data / "shared" / "captures" / "clip.mp4").write_bytes(video.read_bytes())
        segdir = data / "streams" / "1" / "segments" / "r000001"
        segdir.mkdir(parents=True)
        (segdir / "r000001-20250101T120000Z.mp4").write_bytes(video.read_bytes())
        # A recorded segment as the playback route serves it (stream 1 exists; its bytes are the video's).
        with urllib.request.urlopen(urllib.request.Request(f"{d.url}/streams/create?url=udp://127.0.0.1:9")) as r:
            assert json.load(r) == {"stream_id": 1}
        (segdir / "r000001-000001.ts").write_bytes(video.read_bytes())
        routes = {
            "download": f"/download/{fid}/clip.mp4",
            "analysis-output": f"/download/{fid}/analysis/{AID}/clip.mp4",
            "data": f"/data/{fid[:2]}/{fid[2:]}/{stored}",
            "shared": "/shared/captures/clip.mp4",
            "recording": "/data/streams/1/segments/r000001/r000001-20250101T120000Z.mp4",
            "segment": "/streams/1/segments/r000001/r000001-000001.ts",
        }
        yield d, video, routes
    finally:
        d.stop()


ROUTES = ["download", "analysis-output", "data", "shared", "recording", "segment"]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


def head_of(d: Daemon, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET with curl (-D - dumps the response head)."""
    args = []
    for h in headers:
        args += ["-H", h]
    out = curl("-D", "-", "-o", "-", *args, d.url + path).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), fields, body


@pytest.mark.parametrize("route", ROUTES)
def test_curl_resumes_a_cut_download(site, route, tmp_path):
    d, video, routes = site
    out = tmp_path / "part.mp4"
    out.write_bytes(video.read_bytes()[:12345])
    done = curl("-f", "-C", "-", "-o", str(out), d.url + routes[route])
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == video.read_bytes()


@pytest.mark.parametrize("route", ROUTES)
def test_wget_continues_a_cut_download(site, route, tmp_path):
    d, video, routes = site
    out = tmp_path / "part.mp4"
    out.write_bytes(video.read_bytes()[:999])
    done = subprocess.run(["wget", "-q", "-c", "-O", str(out), d.url + routes[route]], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == video.read_bytes()


@pytest.mark.parametrize("route", ROUTES)
def test_multi_range_is_multipart_byteranges_in_the_order_asked(site, route):
    d, video, routes = site
    data = video.read_bytes()
    status, headers, body = head_of(d, routes[route], "Range: bytes=20-29,0-9,-5")
    assert status == 206
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    assert int(headers["content-length"]) == len(body)
    parts = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    got = []
    for part in parts:
        head, _, payload = part.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head)
        a, b, size = map(int, m.groups())
        assert size == len(data) and payload[:-2] == data[a:b + 1] and payload.endswith(b"\r\n")
        got.append((a, b))
    assert got == [(20, 29), (0, 9), (len(data) - 5, len(data) - 1)]


def test_curl_r_with_two_ranges_is_never_416(site):
    d, video, routes = site
    out = curl("-f", "-r", "0-9,20-29", "-D", "-", "-o", "/dev/null", d.url + routes["download"])
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 206")


def test_overlapping_or_many_ranges_are_coalesced(site):
    d, video, routes = site
    data = video.read_bytes()
    status, headers, body = head_of(d, routes["data"], "Range: bytes=0-99,50-149")
    assert status == 206 and headers["content-range"] == f"bytes 0-149/{len(data)}" and body == data[:150]
    many = ",".join(f"{i * 10}-{i * 10 + 4}" for i in range(200))
    status, headers, body = head_of(d, routes["data"], f"Range: bytes={many}")
    assert status == 206 and len(body) < 200 * 5 + 200 * 120  # merged: no per-part header storm


def test_unsatisfiable_and_malformed_ranges(site):
    d, video, routes = site
    size = len(video.read_bytes())
    status, headers, _ = head_of(d, routes["download"], f"Range: bytes={size}-,{size + 5}-{size + 9}")
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    for bad in ("bytes=9-1", "bytes=abc", "items=0-1", "bytes="):
        status, _, body = head_of(d, routes["download"], f"Range: {bad}")
        assert status == 200 and len(body) == size, bad  # an invalid Range is ignored


@pytest.mark.parametrize("route", ROUTES)
def test_if_range_etag_and_date_forms(site, route):
    d, video, routes = site
    data = video.read_bytes()
    path = routes[route]
    _, headers, _ = head_of(d, path)
    etag, modified = headers["etag"], headers["last-modified"]
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(modified).timestamp() - 60, usegmt=True)
    cases = [(etag, 206), ('"stale"', 200), ("W/" + etag, 200), (modified, 206), (earlier, 200), ("garbage", 200)]
    for validator, expected in cases:
        status, got, body = head_of(d, path, "Range: bytes=100-199", f"If-Range: {validator}")
        assert status == expected, validator
        assert body == (data[100:200] if expected == 206 else data), validator
        if expected == 206:
            assert got["content-range"] == f"bytes 100-199/{len(data)}"


@pytest.mark.parametrize("route", ROUTES)
def test_conditional_requests(site, route):
    d, video, routes = site
    path = routes[route]
    _, headers, _ = head_of(d, path)
    etag, modified = headers["etag"], headers["last-modified"]
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(modified).timestamp() - 60, usegmt=True)
    assert head_of(d, path, f"If-None-Match: {etag}")[0] == 304
    assert head_of(d, path, f"If-None-Match: W/{etag}")[0] == 304  # weak comparison
    assert head_of(d, path, "If-None-Match: *")[0] == 304
    assert head_of(d, path, 'If-None-Match: "other"')[0] == 200
    assert head_of(d, path, f"If-Modified-Since: {modified}")[0] == 304
    assert head_of(d, path, f"If-Modified-Since: {earlier}")[0] == 200
    # If-None-Match wins over If-Modified-Since.
    assert head_of(d, path, 'If-None-Match: "other"', f"If-Modified-Since: {modified}")[0] == 200
    assert head_of(d, path, f"If-Match: {etag}")[0] == 200
    assert head_of(d, path, 'If-Match: "other"')[0] == 412
    assert head_of(d, path, f"If-Match: W/{etag}")[0] == 412  # strong comparison
    assert head_of(d, path, f"If-Unmodified-Since: {earlier}")[0] == 412
    assert head_of(d, path, f"If-Unmodified-Since: {modified}")[0] == 200
    status, got, body = head_of(d, path, f"If-None-Match: {etag}")
    assert body == b"" and got["etag"] == etag
    assert got.get("cache-control") == headers.get("cache-control")  # a 304 refreshes the cached 200
    assert head_of(d, path, 'If-Match: "other"')[1]["cache-control"] == "no-store"  # a 412 is never reused


@pytest.mark.parametrize("route", ROUTES)
def test_head_answers_the_get_headers_without_a_body(site, route):
    d, video, routes = site
    out = curl("-I", d.url + routes[route])
    head = out.stdout.decode()
    assert head.startswith("HTTP/1.1 200") and f"Content-Length: {len(video.read_bytes())}" in head
    assert "ETag:" in head and "Accept-Ranges: bytes" in head
    # Range handling is defined for GET only (RFC 9110 section 14.2): a HEAD ignores it.
    out = curl("-I", "-H", "Range: bytes=0-9", d.url + routes[route])
    assert out.stdout.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(video.read_bytes())}\r\n".encode() in out.stdout


@pytest.mark.parametrize("route", ["download", "data", "shared"])
def test_ffmpeg_seeks_over_http(site, route, tmp_path):
    d, video, routes = site
    frame = tmp_path / "frame.png"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-ss", "7", "-i",
                    d.url + routes[route], "-frames:v", "1", "-y", str(frame)], check=True, timeout=60)
    assert ffprobe(frame)["streams"][0]["width"] == 320
    info = ffprobe(d.url + routes[route])
    assert abs(float(info["format"]["duration"]) - 10) < 0.2


def raw_get(d: Daemon, path: str) -> bytes:
    """Every byte of a GET's response, as the socket received it (HTTP/1.0: the server closes)."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nUser-Agent: bytecount\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def test_access_log_counts_the_bytes_sendfile_sent(site):
    d, video, routes = site
    path = routes["download"] + "?bytecount=" + hashlib.sha1(b"x").hexdigest()
    received = raw_get(d, path)
    assert received.split(b"\r\n\r\n", 1)[1] == video.read_bytes()

    def logged():
        for line in d.log_path.read_text().splitlines():
            if path in line:
                return line
        return None

    line = wait_until_sync(logged, what="the access-log line")
    m = re.search(r'" (\d{3}) (\d+) ', line)
    assert m and m.group(1) == "200"
    assert int(m.group(2)) == len(received), line  # headers + body, as sent
