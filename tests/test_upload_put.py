"""Uploads as curl -T, rclone- and S3-style clients send them (PUT), and refusals that come before the
body when the client asked ``Expect: 100-continue``."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.helpers import Daemon, sha256_file

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    root = tmp_path_factory.mktemp("put")
    (root / "data").mkdir()
    daemon = Daemon(root / "data", "--token", TOKEN, "--max-upload-size", "1M")
    daemon.start()
    yield daemon
    daemon.stop()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {TOKEN}", *args], capture_output=True,
                          text=True, timeout=60)


def test_curl_T_with_a_name_in_the_query(d, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x01" * 5000)
    out = curl("-f", "-T", str(clip), f"{d.url}/upload?name=clip.mp4")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["file_id"] == sha256_file(clip) and body["name"] == "clip.mp4" and body["size"] == 10000


def test_curl_T_to_a_directory_url_names_the_file_in_the_path(d, tmp_path):
    clip = tmp_path / "räce 1.mp4"
    clip.write_bytes(b"race" * 999)
    out = curl("-f", "-T", str(clip), f"{d.url}/upload/")  # curl appends the file's name
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["name"] == "räce 1.mp4" and body["file_id"] == sha256_file(clip)
    meta = json.loads(curl("-f", f"{d.url}/upload/{body['file_id']}").stdout)
    assert meta["name"] == "räce 1.mp4"


def expect_answer(d: Daemon, head: str) -> bytes:
    """Send only the head of a request that expects 100-continue; answer what comes back first."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(head.encode())
        return s.recv(4096)


def request_head(method: str, path: str, length: int, *extra: str) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", "Expect: 100-continue", *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


AUTH = f"Authorization: Bearer {TOKEN}"


@pytest.mark.parametrize("method,path", [("PUT", "/upload?name=a.bin"), ("PUT", "/upload/a.bin"),
                                         ("POST", "/upload?name=a.bin")])
def test_a_good_upload_is_told_to_continue(d, method, path):
    first = expect_answer(d, request_head(method, path, 10, AUTH))
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n")


@pytest.mark.parametrize("method,path,extra,status,words", [
    ("PUT", "/upload?name=a.bin", (AUTH,), 413, b"larger than the limit"),
    ("PUT", "/upload/a.bin", (AUTH,), 413, b"larger than the limit"),
    ("POST", "/upload?name=a.bin", (AUTH,), 413, b"larger than the limit"),
    ("PUT", "/upload?name=a.bin", ("Authorization: Bearer wrong",), 401, b"unauthorized"),
    ("POST", "/upload", (), 401, b"unauthorized"),
    ("PATCH", "/upload", (AUTH,), 405, b"Method Not Allowed"),
    ("PATCH", "/files/0123456789abcdef0123456789abcdef", ("Tus-Resumable: 1.0.0",), 401, b"unauthorized"),
    ("POST", "/files/", ("Tus-Resumable: 1.0.0", "Upload-Length: 10"), 401, b"unauthorized"),
    ("PUT", "/no/such/route", (AUTH,), 404, b"Not Found"),
])
def test_a_doomed_upload_is_refused_before_the_body(d, method, path, extra, status, words):
    length = 5 * 1024 * 1024 if status == 413 else 10
    first = expect_answer(d, request_head(method, path, length, *extra))
    assert first.startswith(f"HTTP/1.1 {status} ".encode()), first[:200]
    assert b"error_message" in first and words in first
    assert b"Connection: close" in first  # the body will not come: the connection is not reused


def test_curl_sends_no_body_when_refused(d, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * (3 * 1024 * 1024))
    out = curl("-v", "-T", str(big), f"{d.url}/upload/big.bin")
    assert "HTTP/1.1 413" in out.stderr and "100 Continue" not in out.stderr
    assert "upload completely sent off" not in out.stderr
