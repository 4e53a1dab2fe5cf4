"""Files API: upload (raw, multipart), dedupe, meta, list, delete, download with Range/ETag."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os

import aiohttp
import pytest

from tests.helpers import sha256_file


def stored_files(data_dir):
    """Every object id in the tree and every entry left in tmp."""
    objects = sorted(p.parent.name + p.name for p in data_dir.glob("??/*") if p.parent.name not in ("tmp",))
    temps = sorted(os.listdir(data_dir / "tmp")) if (data_dir / "tmp").exists() else []
    return objects, temps


async def upload(client, body: bytes, name="clip.mp4", **kw):
    resp = await client.post("/upload", params={"name": name}, data=body, **kw)
    return resp.status, await resp.json()


async def test_raw_upload_answers_id_that_is_the_sha256_of_the_bytes(client, data_dir):
    body = os.urandom(300_000)
    status, out = await upload(client, body, "holiday.mp4")
    assert status == 200
    assert out["file_id"] == hashlib.sha256(body).hexdigest()
    assert out["size"] == len(body) and out["name"] == "holiday.mp4"
    obj = data_dir / out["file_id"][:2] / out["file_id"][2:]
    assert sha256_file(obj / "holiday.mp4") == out["file_id"]
    assert os.readlink(obj / "the_file") == "holiday.mp4"
    meta = json.loads((obj / "meta.json").read_text())
    assert meta["name"] == "holiday.mp4" and meta["size"] == len(body)
    assert meta["content_type"] == "video/mp4" and meta["created"].endswith("Z")


async def test_multipart_upload_takes_the_file_field(client):
    body = b"multipart bytes" * 1000
    form = aiohttp.FormData(quote_fields=False)  # as browsers and curl -F send it
    form.add_field("comment", "ignored")
    form.add_field("file", body, filename="cam 1.ts", content_type="video/mp2t")
    resp = await client.post("/upload", data=form)
    out = await resp.json()
    assert resp.status == 200, out
    assert out["file_id"] == hashlib.sha256(body).hexdigest()
    assert out["name"] == "cam 1.ts" and out["size"] == len(body)


async def test_multipart_without_file_field_is_400_and_stores_nothing(client, data_dir):
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="x.bin")
    resp = await client.post("/upload", data=form)
    assert resp.status == 400
    assert "file" in (await resp.json())["error_message"]
    assert stored_files(data_dir) == ([], [])


async def test_name_from_content_disposition(client):
    resp = await client.post("/upload", data=b"abc",
                             headers={"Content-Disposition": 'attachment; filename="from-header.mkv"'})
    assert (await resp.json())["name"] == "from-header.mkv"


async def test_same_bytes_twice_is_stored_once(client, data_dir):
    body = os.urandom(10_000)
    _, first = await upload(client, body, "a.bin")
    _, second = await upload(client, body, "b.bin")
    assert first["file_id"] == second["file_id"]
    assert first["deduplicated"] is False and second["deduplicated"] is True
    obj = data_dir / first["file_id"][:2] / first["file_id"][2:]
    assert sorted(os.listdir(obj)) == ["a.bin", "meta.json", "the_file"]
    assert stored_files(data_dir) == ([first["file_id"]], [])


async def test_twenty_concurrent_uploads_of_same_and_different_bytes(client, data_dir):
    same = os.urandom(200_000)
    bodies = [same] * 10 + [os.urandom(200_000) for _ in range(10)]
    results = await asyncio.gather(*(upload(client, b, f"f{i}.bin") for i, b in enumerate(bodies)))
    assert all(status == 200 for status, _ in results)
    ids = {out["file_id"] for _, out in results}
    assert ids == {hashlib.sha256(b).hexdigest() for b in bodies}
    assert len(ids) == 11
    objects, temps = stored_files(data_dir)
    assert sorted(objects) == sorted(ids) and temps == []
    for oid in ids:
        meta = json.loads((data_dir / oid[:2] / oid[2:] / "meta.json").read_text())
        assert sha256_file(data_dir / oid[:2] / oid[2:] / meta["stored_name"]) == oid


async def test_upload_over_the_limit_is_413_and_leaves_nothing(make_client, data_dir):
    client = await make_client(max_upload_size=100_000, upload_chunk_size=16_384)

    async def body():
        for _ in range(50):
            yield os.urandom(16_384)

    resp = await client.post("/upload", data=body())
    assert resp.status == 413
    assert "limit" in (await resp.json())["error_message"]
    assert stored_files(data_dir) == ([], [])


async def test_declared_length_over_the_limit_is_refused_before_reading(make_client, data_dir):
    client = await make_client(max_upload_size=1000)
    resp = await client.post("/upload", data=b"x" * 5000)
    assert resp.status == 413
    assert stored_files(data_dir) == ([], [])


@pytest.mark.parametrize("hostile", [
    "../x", "../../etc/passwd", "/etc/passwd", "a\x00b.mp4", "evil\r\nX-Header: 1.mp4",
    "x" * 300 + ".mp4", "видео 📹.mp4", "..", ".", "meta.json", "the_file", "C:\\windows\\x.exe", "",
])
async def test_hostile_names_are_stored_safely(client, data_dir, hostile):
    body = hostile.encode("utf-8", "surrogatepass") + b"-payload"
    resp = await client.post("/upload", data=body,
                             headers={"Content-Disposition": "attachment; filename*=UTF-8''"
                                      + "".join(f"%{b:02X}" for b in hostile.encode())})
    out = await resp.json()
    assert resp.status == 200, out
    obj = data_dir / out["file_id"][:2] / out["file_id"][2:]
    meta = json.loads((obj / "meta.json").read_text())
    stored = meta["stored_name"]
    assert "/" not in stored and "\\" not in stored and "\x00" not in stored
    assert stored not in ("meta.json", "the_file", ".", "..") and len(stored) <= 120
    assert stored.isascii() and not any(c in stored for c in "\r\n")
    assert sorted(os.listdir(obj)) == sorted(["meta.json", "the_file", stored])
    assert not any(c in meta["name"] for c in "\x00\r\n/") and len(meta["name"]) <= 255
    # Nothing escaped the object directory.
    assert not (data_dir.parent / "x").exists() and not (data_dir / "x").exists()
    cd = (await client.get(f"/download/{out['file_id']}")).headers["Content-Disposition"]
    assert "\r" not in cd and "\n" not in cd


async def test_meta_and_paged_list(client):
    ids = sorted([(await upload(client, os.urandom(100), f"{i}.bin"))[1]["file_id"] for i in range(5)])
    resp = await client.get(f"/upload/{ids[0]}")
    meta = await resp.json()
    assert resp.status == 200 and meta["file_id"] == ids[0] and meta["download"].startswith("/download/")
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/upload", params=params)).json()
        seen += [f["file_id"] for f in page["files"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert (await client.get("/upload", params={"limit": "0"})).status == 400
    assert (await client.get("/upload", params={"cursor": "../x"})).status == 400


async def test_delete_removes_the_object(client, data_dir):
    _, out = await upload(client, b"delete me")
    resp = await client.delete(f"/upload/{out['file_id']}")
    assert resp.status == 200 and (await resp.json())["deleted"] is True
    assert stored_files(data_dir) == ([], [])
    assert (await client.get(f"/upload/{out['file_id']}")).status == 404
    assert (await client.delete(f"/upload/{out['file_id']}")).status == 404


@pytest.mark.parametrize("bad", ["42", "zz" * 32, "A" * 64, "0" * 63, "0" * 65])
async def test_malformed_ids_are_400(client, bad):
    for method, path in (("DELETE", f"/upload/{bad}"), ("GET", f"/upload/{bad}"), ("GET", f"/download/{bad}")):
        resp = await client.request(method, path)
        assert resp.status == 400, (method, path)
        assert "file_id" in (await resp.json())["error_message"]


async def test_unknown_id_is_404(client):
    unknown = "0" * 64
    for method, path in (("GET", f"/upload/{unknown}"), ("GET", f"/download/{unknown}"),
                         ("DELETE", f"/upload/{unknown}")):
        resp = await client.request(method, path)
        assert resp.status == 404
        assert "error_message" in await resp.json()


async def test_download_full_range_etag_and_headers(client):
    body = bytes(range(256)) * 40
    _, out = await upload(client, body, "räce clip.mp4")
    fid = out["file_id"]
    resp = await client.get(f"/download/{fid}/race.mp4")
    assert resp.status == 200 and await resp.read() == body
    assert resp.headers["ETag"] == f'"{fid}"'
    assert "immutable" in resp.headers["Cache-Control"]
    assert resp.headers["Content-Type"] == "video/mp4"
    assert "filename*=UTF-8''r%C3%A4ce%20clip.mp4" in resp.headers["Content-Disposition"]
    assert resp.headers["Accept-Ranges"] == "bytes"

    first = await client.get(f"/download/{fid}", headers={"Range": "bytes=0-0"})
    assert first.status == 206 and await first.read() == body[:1]
    assert first.headers["Content-Range"] == f"bytes 0-0/{len(body)}"
    last = await client.get(f"/download/{fid}", headers={"Range": f"bytes={len(body) - 1}-"})
    assert last.status == 206 and await last.read() == body[-1:]
    suffix = await client.get(f"/download/{fid}", headers={"Range": "bytes=-100"})
    assert suffix.status == 206 and await suffix.read() == body[-100:]
    middle = await client.get(f"/download/{fid}", headers={"Range": "bytes=1000-1999"})
    assert middle.status == 206 and await middle.read() == body[1000:2000]
    past = await client.get(f"/download/{fid}", headers={"Range": f"bytes={len(body)}-"})
    assert past.status == 416

    cached = await client.get(f"/download/{fid}", headers={"If-None-Match": f'"{fid}"'})
    assert cached.status == 304 and cached.headers["ETag"] == f'"{fid}"'
    other = await client.get(f"/download/{fid}", headers={"If-None-Match": '"other"'})
    assert other.status == 200


async def test_healthz(client, data_dir):
    resp = await client.get("/healthz")
    out = await resp.json()
    assert resp.status == 200
    assert out["ok"] is True and out["data_dir"] == str(data_dir.absolute())
    assert out["free_bytes"] > 0 and out["version"]


async def test_unknown_route_and_method_answer_the_error_shape(client):
    resp = await client.get("/no/such/route")
    assert resp.status == 404 and "error_message" in await resp.json()
    resp = await client.patch("/upload")
    assert resp.status == 405 and "error_message" in await resp.json()


async def test_token_auth(make_client):
    client = await make_client(token="s3cret")
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/upload")
    assert resp.status == 401 and "Basic" in resp.headers["WWW-Authenticate"]
    assert (await client.get("/upload", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/upload", headers={"Authorization": "Bearer s3cret"})).status == 200
    def basic(password):
        return {"Authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}

    assert (await client.get("/data/", headers=basic("s3cret"))).status == 200
    assert (await client.get("/data/", headers=basic("nope"))).status == 401
    assert (await client.get("/upload", headers={"Authorization": "Basic !!!"})).status == 401


async def test_no_token_means_open(client):
    assert (await client.get("/upload")).status == 200
