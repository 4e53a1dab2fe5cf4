"""Small objects served from memory answer exactly what the file path answers, and never stale or damaged bytes."""

from __future__ import annotations

import hashlib
import os

from storaged.api.keys import OBJECTS
from storaged.store.layout import Layout

BODY = bytes(range(256)) * 16  # 4 KiB


async def put(client, body: bytes = BODY, name: str = "small.bin") -> str:
    resp = await client.post(f"/upload?name={name}", data=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["file_id"]


CASES = [
    {},
    {"Range": "bytes=0-9"},
    {"Range": "bytes=-5"},
    {"Range": "bytes=0-9,100-119"},
    {"Range": "bytes=9999-"},
    {"If-None-Match": '"{etag}"'},
    {"If-Match": '"nope"'},
    {"Range": "bytes=0-9", "If-Range": '"{etag}"'},
    {"Range": "bytes=0-9", "If-Range": '"stale"'},
]


async def _answers(client, file_id: str, method: str = "GET") -> list[tuple]:
    out = []
    for case in CASES:
        headers = {k: v.format(etag=file_id) for k, v in case.items()}
        resp = await client.request(method, f"/download/{file_id}", headers=headers)
        body = await resp.read()
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("multipart/byteranges"):
            boundary = ctype.split("boundary=")[1]
            body = body.replace(boundary.encode(), b"B")
            ctype = "multipart/byteranges"
        out.append((resp.status, body, ctype, resp.headers.get("Content-Range"), resp.headers.get("ETag"),
                    resp.headers.get("Content-Length"), resp.headers.get("Cache-Control"),
                    resp.headers.get("Content-Disposition")))
    return out


async def test_memory_answers_equal_the_file_answers(make_client):
    cached = await make_client()
    uncached = await make_client(small_file_cache=0)
    file_id = await put(cached)
    for method in ("GET", "HEAD"):
        first = await _answers(uncached, file_id, method)
        assert first[0][0] == 200 and (method == "HEAD" or first[0][1] == BODY)
        if method == "GET":
            assert [a[0] for a in first] == [200, 206, 206, 206, 416, 304, 412, 206, 200]
        assert await _answers(cached, file_id, method) == first
        assert await _answers(cached, file_id, method) == first  # now from memory
    assert cached.server.app[OBJECTS].small.hits > 0


async def test_served_from_memory_after_the_first_download(client, data_dir):
    file_id = await put(client)
    assert await (await client.get(f"/download/{file_id}")).read() == BODY
    objects = client.server.app[OBJECTS]
    assert file_id in objects.small._entries
    # The bytes on disk are no longer read: the answer comes from memory, unchanged.
    reads_before = objects.small.hits
    assert await (await client.get(f"/download/{file_id}?dl")).read() == BODY
    assert objects.small.hits == reads_before + 1


async def test_a_deleted_object_is_not_served_from_memory(client):
    file_id = await put(client)
    assert (await client.get(f"/download/{file_id}")).status == 200
    assert (await client.delete(f"/upload/{file_id}")).status == 200
    assert (await client.get(f"/download/{file_id}")).status == 404


async def test_damaged_bytes_are_never_cached_and_a_repair_is_seen(client, data_dir):
    file_id = await put(client)
    od = Layout(data_dir).object_dir(file_id)
    stored = next(p for p in od.iterdir() if p.name not in ("meta.json",) and not p.name.startswith("."))
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF
    os.chmod(stored, 0o644)
    stored.write_bytes(bytes(data))
    resp = await client.get(f"/download/{file_id}")
    assert await resp.read() == bytes(data)  # served from disk as it is, never kept
    assert file_id not in client.server.app[OBJECTS].small._entries
    # The next upload of the good bytes repairs the object; downloads then answer them.
    resp = await client.post("/upload?name=small.bin", data=BODY)
    assert (await resp.json())["file_id"] == file_id
    got = await (await client.get(f"/download/{file_id}")).read()
    assert hashlib.sha256(got).hexdigest() == file_id


async def test_the_budget_bounds_what_is_held(make_client):
    client = await make_client(small_file_cache=10_000, small_file_max=5_000)
    ids = [await put(client, os.urandom(4000), f"{i}.bin") for i in range(5)]
    for file_id in ids:
        assert (await client.get(f"/download/{file_id}")).status == 200
    small = client.server.app[OBJECTS].small
    assert small.held <= 10_000
    assert list(small._entries) == ids[-2:]  # least recently served evicted first
    big = await put(client, os.urandom(6000), "big.bin")
    assert (await client.get(f"/download/{big}")).status == 200
    assert big not in small._entries
