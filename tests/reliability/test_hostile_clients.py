"""Hostile and careless clients against a real daemon: what each may hold, and that it is taken back.

Each test starts ``storaged serve`` with the rule under test made small (seconds, not
nginx's minutes) and plays the client over raw loopback sockets, so nothing between
test and daemon normalises the misbehaviour: a slowloris trickling header lines, an
idle kept-alive connection, an upload that stalls, a download nobody reads, more
clients than the connection cap, a token-guessing loop.  Each asserts the cut (the
socket sees EOF or a reset, the rule's counter on /metrics moved, nothing is left on
disk) and that other clients are served meanwhile — never how fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(300)


async def metric(url: str, name: str, headers: dict | None = None) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=headers or {}) as r:
        text = await r.text()
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 60) -> bytes:
    """Read until the server closes (EOF or reset); what was read."""
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got


async def healthz(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status


async def test_slowloris_is_cut_after_the_head_timeout_while_healthz_answers(daemon, tmp_path):
    d = daemon("--header-timeout", "3", "--max-connections", "2000")
    host, port = "127.0.0.1", d.port
    clients = 300
    cut_after: list[float] = []
    trickled = asyncio.Event()

    async def slowloris() -> None:
        # Before connecting: the daemon's clock for this head starts at accept, which cannot come
        # earlier (taken after the connect, a loaded test loop resuming late made cuts look early).
        began = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            try:
                for i in range(1000):
                    await asyncio.sleep(0.5)
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())
                    trickled.set()
            except (ConnectionError, RuntimeError):
                pass

        trickler = asyncio.create_task(trickle())
        got = await closed_by_server(reader)
        cut_after.append(time.monotonic() - began)
        trickler.cancel()
        writer.close()
        assert got == b"", f"a half-sent head got an answer: {got[:100]!r}"

    tasks = [asyncio.create_task(slowloris()) for _ in range(clients)]
    await trickled.wait()
    # Polled: on a loaded machine the clients' connects may still be under way when the first one trickles.
    await wait_until(lambda: _held_at_least(d.url, clients / 2), timeout=60,
                     what="the daemon to hold half the slowloris connections at once")
    statuses = [await healthz(d.url) for _ in range(5)]  # served while the slowloris holds its connections
    assert statuses == [200] * 5
    await asyncio.gather(*tasks)
    assert len(cut_after) == clients
    assert min(cut_after) >= 3 - 0.5, "a trickling client was cut before the head timeout"
    assert await metric(d.url, 'storaged_http_connections_closed_total{reason="header_timeout"}') >= clients
    assert await healthz(d.url) == 200


async def test_idle_keepalive_connection_is_closed(daemon):
    d = daemon("--keepalive-timeout", "1")
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
    for _ in range(2):  # the connection is kept alive between requests that come in time
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
    assert await closed_by_server(reader) == b""
    writer.close()
    assert await metric(d.url, 'storaged_http_connections_closed_total{reason="keepalive_timeout"}') >= 1


async def test_stalled_upload_is_cut_and_leaves_nothing(daemon):
    d = daemon("--upload-min-rate", "64K", "--upload-rate-window", "1")
    tmp = d.data_dir / "tmp"
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
    size = 50 * 1024 * 1024
    writer.write(f"POST /upload?name=stalled.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode())
    writer.write(os.urandom(256 * 1024))
    await writer.drain()
    await wait_until(lambda: _async(any(p.name.startswith("upload-") for p in tmp.iterdir())),
                     what="the upload's temp file")
    # ...and then the client sends nothing more.
    got = await closed_by_server(reader)
    writer.close()
    assert not got.startswith(b"HTTP/1.1 200"), got[:200]
    await wait_until(lambda: _async(not any(tmp.iterdir())), timeout=60, what="the temp file removed")
    objects = [p for p in d.data_dir.iterdir() if len(p.name) == 2]
    assert objects == [], f"a cut upload stored something: {objects}"
    assert await metric(d.url, 'storaged_http_connections_closed_total{reason="slow_upload"}') == 1
    # A client at a decent rate is not cut.
    async with aiohttp.ClientSession() as s:
        async with s.post(d.url + "/upload", params={"name": "ok.bin"}, data=io.BytesIO(os.urandom(4 * 1024 * 1024))) as r:
            assert r.status == 200


async def test_beyond_the_cap_a_new_client_gets_503_while_a_download_completes(daemon, tmp_path):
    cap = 20
    d = daemon("--max-connections", str(cap))
    payload = os.urandom(32 * 1024 * 1024)
    async with aiohttp.ClientSession() as s:
        async with s.post(d.url + "/upload", params={"name": "big.bin"}, data=io.BytesIO(payload)) as r:
            file_id = (await r.json())["file_id"]
    await wait_until(lambda: _metric_is(d.url, "storaged_http_connections", 1), what="upload connection gone")

    dl_reader, dl_writer = await asyncio.open_connection("127.0.0.1", d.port)
    dl_writer.write(f"GET /download/{file_id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head = await dl_reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    first = await dl_reader.readexactly(1024 * 1024)  # the download is running

    idle = [await asyncio.open_connection("127.0.0.1", d.port) for _ in range(cap - 1)]
    await wait_until(lambda: _metric_at_least_raw(d.port, cap), what="the cap reached")
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await closed_by_server(reader, timeout=30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"Retry-After: 1" in answer and b'"error_message"' in answer

    rest = await closed_by_server(dl_reader, timeout=60)
    dl_writer.close()
    assert hashlib.sha256(first + rest).hexdigest() == file_id, "the running download did not complete whole"
    for _, w in idle:
        w.close()
    await wait_until(lambda: _metric_is(d.url, "storaged_http_connections", 1), what="idle connections gone")
    assert await metric(d.url, "storaged_http_connections_refused_total") >= 1


async def test_a_client_that_stops_reading_a_download_is_cut(daemon):
    d = daemon("--send-timeout", "2")
    payload = os.urandom(64 * 1024 * 1024)  # more than loopback's socket buffers hold
    async with aiohttp.ClientSession() as s:
        async with s.post(d.url + "/upload", params={"name": "big.bin"}, data=io.BytesIO(payload)) as r:
            file_id = (await r.json())["file_id"]
    # A small reader limit: the stream stops reading the socket once 8 KiB are buffered.
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port, limit=4096)
    writer.write(f"GET /download/{file_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")  # ...and then reads nothing more
    await wait_until(lambda: _metric_is(d.url, 'storaged_http_connections_closed_total{reason="send_timeout"}', 1),
                     timeout=60, what="the stalled download cut")
    # The handler stuck in sendfile ended with the connection (only the /metrics scrape is in flight).
    await wait_until(lambda: _metric_is(d.url, "storaged_http_requests_in_flight", 1), what="the handler ended")
    got = await closed_by_server(reader)
    writer.close()
    assert len(got) < len(payload), "the whole file went out to a client that stopped reading"


async def test_token_guessing_is_slowed_down_per_address(make_client, caplog):
    client = await make_client(token="the-right-token", auth_max_failures=5, auth_failure_window=60)
    url = client.make_url("/upload")
    statuses = []
    for i in range(20):
        r = await client.get("/upload", headers={"Authorization": f"Bearer guess-{i}"})
        statuses.append(r.status)
        if r.status == 429:
            retry = int(r.headers["Retry-After"])
            assert 1 <= retry <= 60
            assert "too many wrong tokens" in (await r.json())["error_message"]
    assert statuses == [401] * 5 + [429] * 15
    # While refused, even the right token is not compared: a hit looks like a miss.
    assert (await client.get("/upload", headers={"Authorization": "Bearer the-right-token"})).status == 429
    assert (await client.get("/upload")).status == 429
    assert (await client.get("/healthz")).status == 200
    assert sum("wrong tokens from" in rec.getMessage() for rec in caplog.records) == 1, "logged once per burst"
    # Another address is not affected.
    conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=conn) as other:
        auth = {"Authorization": "Bearer the-right-token"}
        async with other.get(url, headers=auth) as r:
            assert r.status == 200
        async with other.get(client.make_url("/metrics"), headers=auth) as r:
            text = await r.text()
    assert re.search(r"^storaged_auth_failures_total 5\.0$", text, re.M)
    assert re.search(r"^storaged_auth_throttled_total 17\.0$", text, re.M)
    assert re.search(r"^storaged_auth_throttled_clients 1\.0$", text, re.M)


async def _async(value):
    return value


async def _held_at_least(url: str, count: float) -> bool:
    return await metric(url, "storaged_http_connections") >= count


async def _metric_is(url: str, name: str, value: float) -> bool:
    return await metric(url, name) == value


async def _metric_at_least_raw(port: int, count: int) -> bool:
    """Whether the daemon holds ``count`` connections, read without opening one more (it would be refused)."""
    pid_conns = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED on the daemon's side
            pid_conns += 1
    return pid_conns >= count
