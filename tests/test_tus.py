"""tus 1.0.0 at /files/: core, discovery, extensions, bad input, concurrency, durability, expiry."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import io
import json
import os
import time

from storaged.ops.api import JANITOR
from storaged.app import create_app
from storaged.config import Config
from storaged.uploads.service import Uploads
from tests.helpers import wait_until
from tests.ops_helpers import free_bytes, mount_tmpfs, umount

T = {"Tus-Resumable": "1.0.0"}
OCTETS = {**T, "Content-Type": "application/offset+octet-stream"}


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


async def create(client, length: int | None = None, metadata: str | None = None, **headers):
    h = {**T, **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    if metadata is not None:
        h["Upload-Metadata"] = metadata
    resp = await client.post("/files/", headers=h)
    assert resp.status == 201, await resp.text()
    return resp.headers["Location"]


async def patch(client, url: str, offset: int, body: bytes, **headers):
    return await client.patch(url, data=io.BytesIO(body), headers={**OCTETS, "Upload-Offset": str(offset), **headers})


async def head(client, url: str):
    return await client.head(url, headers=T)


def file_lock_held(path) -> bool:
    """Whether another open file holds ``path``'s lock (the daemon's locks are flock locks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def info_of(data_dir, url: str) -> dict:
    return json.loads((data_dir / "uploads" / url.rsplit("/", 1)[1] / "info.json").read_text())


async def test_options_announces_version_extensions_max_size_and_checksums(make_client):
    client = await make_client(max_upload_size=1 << 30)
    resp = await client.options("/files/")
    assert resp.status == 204
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
        "termination", "concatenation"}
    assert resp.headers["Tus-Max-Size"] == str(1 << 30)
    assert {"sha1", "sha256", "md5"} <= set(resp.headers["Tus-Checksum-Algorithm"].split(","))


async def test_upload_in_patches_becomes_the_same_object_as_post_upload(client, data_dir):
    body = os.urandom(2_500_000)
    url = await create(client, len(body), f"filename {b64('lap 1.mp4')},filetype {b64('video/mp4')},camera {b64('7')}")
    assert url.startswith("/files/")
    resp = await head(client, url)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0" and resp.headers["Upload-Length"] == str(len(body))
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" in resp.headers
    offset = 0
    for size in (1_000_000, 1_000_000, 500_000):
        resp = await patch(client, url, offset, body[offset:offset + size])
        assert resp.status == 204, await resp.text()
        offset += size
        assert resp.headers["Upload-Offset"] == str(offset)
        assert resp.headers["Tus-Resumable"] == "1.0.0"
    file_id = hashlib.sha256(body).hexdigest()
    assert resp.headers["File-Id"] == file_id
    resp = await head(client, url)
    assert resp.headers["File-Id"] == file_id and resp.headers["Upload-Offset"] == str(len(body))
    assert resp.headers["Upload-Metadata"].startswith("filename ")
    # The same object as POST /upload: same meta, listed, downloadable; the upload's bytes are gone.
    view = await (await client.get(url)).json()
    assert view["complete"] and view["file_id"] == file_id and view["offset"] == len(body)
    assert view["metadata"] == {"filename": "lap 1.mp4", "filetype": "video/mp4", "camera": "7"}
    meta = await (await client.get(f"/upload/{file_id}")).json()
    assert meta["name"] == "lap 1.mp4" and meta["content_type"] == "video/mp4" and meta["size"] == len(body)
    assert set(meta) >= {"file_id", "name", "stored_name", "size", "content_type", "created"}
    assert file_id in [f["file_id"] for f in (await (await client.get("/upload")).json())["files"]]
    assert await (await client.get(view["download"])).read() == body
    assert not (data_dir / "uploads" / view["id"] / "data").exists()
    # Same bytes through POST /upload: a dedupe of the same object.
    again = await (await client.post("/upload", params={"name": "x.mp4"}, data=io.BytesIO(body))).json()
    assert again["file_id"] == file_id and again["deduplicated"]


async def test_creation_with_upload_and_empty_upload(client):
    body = b"hello world"
    resp = await client.post("/files", data=body, headers={**OCTETS, "Upload-Length": "11"})
    assert resp.status == 201
    assert resp.headers["Upload-Offset"] == "11"
    assert resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()
    resp = await client.post("/files", data=b"hel", headers={**OCTETS, "Upload-Length": "11"})
    assert resp.status == 201 and resp.headers["Upload-Offset"] == "3" and "File-Id" not in resp.headers
    resp = await client.post("/files/", headers={**T, "Upload-Length": "0"})
    assert resp.status == 201 and resp.headers["File-Id"] == hashlib.sha256(b"").hexdigest()


async def test_deferred_length_is_set_by_a_later_patch(client):
    resp = await client.post("/files/", headers={**T, "Upload-Defer-Length": "1"})
    url = resp.headers["Location"]
    assert (await head(client, url)).headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in (await head(client, url)).headers
    assert (await patch(client, url, 0, b"abc")).status == 204
    resp = await patch(client, url, 3, b"def", **{"Upload-Length": "6"})
    assert resp.status == 204 and resp.headers["File-Id"] == hashlib.sha256(b"abcdef").hexdigest()
    resp = await head(client, url)
    assert resp.headers["Upload-Length"] == "6" and "Upload-Defer-Length" not in resp.headers
    # Once set, the length cannot change; a length below the offset is refused.
    resp = await client.post("/files/", headers={**T, "Upload-Defer-Length": "1"})
    url2 = resp.headers["Location"]
    await patch(client, url2, 0, b"abcd")
    resp = await patch(client, url2, 4, b"", **{"Upload-Length": "2"})
    assert resp.status == 400 and "below the offset" in (await resp.json())["error_message"]


async def test_checksums_sha1_sha256_md5_and_mismatch_discards_the_chunk(client, data_dir):
    body = os.urandom(300_000)
    url = await create(client, len(body))
    part = body[:100_000]
    good = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
    resp = await patch(client, url, 0, part, **{"Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"other").digest())})
    assert resp.status == 460
    assert "checksum" in (await resp.json())["error_message"]
    assert (await head(client, url)).headers["Upload-Offset"] == "0"
    assert os.path.getsize(data_dir / "uploads" / url.rsplit("/", 1)[1] / "data") == 0
    offset = 0
    for name, fn in good.items():
        chunk = body[offset:offset + 100_000]
        resp = await patch(client, url, offset, chunk, **{"Upload-Checksum": f"{name} {b64(fn(chunk).digest())}"})
        assert resp.status == 204, (name, await resp.text())
        offset += len(chunk)
    assert resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()


async def test_unsupported_or_malformed_checksum_is_400(client):
    url = await create(client, 10)
    for value in ("crc32 AAAAAA==", "sha1 not-base64!", "sha1 " + b64(b"short"), "sha1"):
        resp = await patch(client, url, 0, b"0123456789", **{"Upload-Checksum": value})
        assert resp.status == 400, value
        assert "Upload-Checksum" in (await resp.json())["error_message"]
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def test_termination(client, data_dir):
    url = await create(client, 10)
    await patch(client, url, 0, b"01234")
    resp = await client.delete(url, headers=T)
    assert resp.status == 204 and resp.headers["Tus-Resumable"] == "1.0.0"
    assert (await head(client, url)).status == 404
    assert (await patch(client, url, 5, b"56789")).status == 404
    assert not (data_dir / "uploads" / url.rsplit("/", 1)[1]).exists()


async def test_concatenation_of_partial_uploads(client):
    urls = []
    for part in (b"hello", b" ", b"world"):
        url = await create(client, len(part), **{"Upload-Concat": "partial"})
        resp = await patch(client, url, 0, part)
        assert resp.status == 204 and "File-Id" not in resp.headers  # partials are not stored files
        urls.append(url)
    assert (await head(client, urls[0])).headers["Upload-Concat"] == "partial"
    concat = "final;" + " ".join(["http://elsewhere.example" + urls[0], *urls[1:]])
    resp = await client.post("/files/", headers={**T, "Upload-Concat": concat,
                                                  "Upload-Metadata": f"filename {b64('hw.txt')}"})
    assert resp.status == 201, await resp.text()
    final = resp.headers["Location"]
    resp = await head(client, final)
    assert resp.headers["Upload-Concat"] == concat
    assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == "11"
    file_id = resp.headers["File-Id"]
    assert file_id == hashlib.sha256(b"hello world").hexdigest()
    assert (await (await client.get(f"/upload/{file_id}")).json())["name"] == "hw.txt"
    assert (await patch(client, final, 11, b"x")).status == 403
    # Refused: an unfinished partial, a non-partial, an upload of another server, a length header.
    unfinished = await create(client, 5, **{"Upload-Concat": "partial"})
    plain = await create(client, 5)
    for value, status in ((f"final;{unfinished}", 400), (f"final;{plain}", 400), ("final;/other/abc", 400),
                          ("final;", 400), ("final;/files/" + "0" * 32, 404), ("whole", 400)):
        resp = await client.post("/files/", headers={**T, "Upload-Concat": value})
        assert resp.status == status, (value, await resp.text())
    resp = await client.post("/files/", headers={**T, "Upload-Concat": f"final;{urls[0]}", "Upload-Length": "5"})
    assert resp.status == 400


async def test_offset_mismatch_409_wrong_type_415_version_412(client, data_dir):
    url = await create(client, 10)
    resp = await patch(client, url, 3, b"abc")
    assert resp.status == 409 and "Upload-Offset" in (await resp.json())["error_message"]
    resp = await client.patch(url, data=b"abc", headers={**T, "Upload-Offset": "0",
                                                          "Content-Type": "application/octet-stream"})
    assert resp.status == 415
    resp = await client.patch(url, data=b"abc", headers={**OCTETS, "Upload-Offset": "0", "Tus-Resumable": "0.2.2"})
    assert resp.status == 412 and resp.headers["Tus-Version"] == "1.0.0"
    assert "Tus-Resumable" in (await resp.json())["error_message"]
    resp = await client.post("/files/", headers={"Upload-Length": "5"})
    assert resp.status == 412
    assert (await head(client, url)).headers["Upload-Offset"] == "0"
    assert os.path.getsize(data_dir / "uploads" / url.rsplit("/", 1)[1] / "data") == 0


async def test_malformed_headers_are_400_in_the_error_shape_and_change_nothing(client, data_dir):
    bad_creations = [{"Upload-Length": "-1"}, {"Upload-Length": "ten"}, {"Upload-Length": "1", "Upload-Defer-Length": "1"},
                     {}, {"Upload-Defer-Length": "2"}, {"Upload-Length": "5", "Upload-Metadata": "a b,a c"},
                     {"Upload-Length": "5", "Upload-Metadata": "name not*base64"},
                     {"Upload-Length": "5", "Upload-Metadata": " "}]
    for headers in bad_creations:
        resp = await client.post("/files/", headers={**T, **headers})
        assert resp.status == 400, headers
        assert (await resp.json())["error_message"]
    assert not (data_dir / "uploads").exists() or not list((data_dir / "uploads").iterdir())
    url = await create(client, 10)
    for headers in ({"Upload-Offset": "x"}, {"Upload-Offset": "-1"}, {"Upload-Offset": ""}):
        resp = await client.patch(url, data=b"abc", headers={**OCTETS, **headers})
        assert resp.status == 400, headers
    resp = await client.patch(url, data=b"abc", headers=OCTETS)
    assert resp.status == 400 and "Upload-Offset" in (await resp.json())["error_message"]
    resp = await client.head("/files/not-an-id", headers=T)
    assert resp.status == 400
    resp = await client.get("/files/" + "f" * 32)
    assert resp.status == 404 and (await resp.json())["error_message"]


async def test_too_large_is_413_and_nothing_beyond_the_length_is_stored(make_client, data_dir):
    client = await make_client(max_upload_size=1000)
    resp = await client.post("/files/", headers={**T, "Upload-Length": "1001"})
    assert resp.status == 413
    url = await create(client, 10)
    resp = await patch(client, url, 0, b"x" * 11)
    assert resp.status == 413
    assert (await head(client, url)).headers["Upload-Offset"] == "0"

    async def chunked():  # no Content-Length: found out while streaming
        for _ in range(3):
            yield b"y" * 4

    resp = await client.patch(url, data=chunked(), headers={**OCTETS, "Upload-Offset": "0"})
    assert resp.status == 413
    assert (await head(client, url)).headers["Upload-Offset"] == "0"
    assert os.path.getsize(data_dir / "uploads" / url.rsplit("/", 1)[1] / "data") == 0
    assert (await patch(client, url, 0, b"z" * 10)).status == 204


async def test_two_patches_at_once_never_interleave(client, data_dir):
    body = os.urandom(1_000_000)
    url = await create(client, len(body))
    gate = asyncio.Event()

    async def slow(part: bytes):
        yield part[:1000]
        await gate.wait()
        yield part[1000:]

    first = asyncio.create_task(client.patch(url, data=slow(body[:500_000]),
                                             headers={**OCTETS, "Upload-Offset": "0"}))
    lock = data_dir / "locks" / "uploads" / f"{url.rsplit('/', 1)[1]}.lock"
    await wait_until(lambda: asyncio.sleep(0, file_lock_held(lock)), what="the first PATCH to take the upload")
    second = await patch(client, url, 0, b"\0" * 500_000)
    gate.set()
    first = await first
    # The second waited (then its offset no longer matched) or was told the upload is locked.
    assert second.status in (409, 423), second.status
    assert first.status == 204
    resp = await patch(client, url, 500_000, body[500_000:])
    assert resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()


async def test_a_broken_patch_keeps_what_arrived_and_the_client_resumes(client, data_dir):
    body = os.urandom(3_000_000)
    url = await create(client, len(body))

    async def breaks():
        yield body[:1_200_000]
        raise ConnectionResetError("cable pulled")

    try:
        await client.patch(url, data=breaks(), headers={**OCTETS, "Upload-Offset": "0",
                                                        "Content-Length": str(len(body))})
    except Exception:
        pass

    async def committed():
        info = info_of(data_dir, url)
        return info["offset"] if info["offset"] > 0 else None

    from tests.helpers import wait_until
    offset = await wait_until(committed, what="the received bytes to be committed")
    assert 0 < offset <= 1_200_000
    assert int((await head(client, url)).headers["Upload-Offset"]) == offset
    assert os.path.getsize(data_dir / "uploads" / url.rsplit("/", 1)[1] / "data") >= offset
    resp = await patch(client, url, offset, body[offset:])
    assert resp.status == 204 and resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()


async def test_restart_truncates_uncommitted_bytes_and_recomputes_the_hash(make_client, data_dir):
    """A crash may leave bytes past the committed offset: they are dropped, the hash is rebuilt."""
    body = os.urandom(2_000_000)
    client = await make_client()
    url = await create(client, len(body))
    assert (await patch(client, url, 0, body[:700_000])).status == 204
    upload_dir = data_dir / "uploads" / url.rsplit("/", 1)[1]
    with open(upload_dir / "data", "ab") as fh:  # written after the last commit, then the daemon died
        fh.write(b"\xff" * 50_000)
    await client.close()
    client = await make_client()  # a new daemon: no hash in memory
    resp = await head(client, url)
    assert resp.headers["Upload-Offset"] == "700000"
    resp = await patch(client, url, 700_000, body[700_000:])
    assert resp.status == 204 and resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()


async def crashed_before_publishing(make_client, data_dir, body: bytes) -> str:
    """An upload as a crash between its last commit and publishing leaves it: its url."""
    client = await make_client()
    url = await create(client, len(body))
    upload_dir = data_dir / "uploads" / url.rsplit("/", 1)[1]
    (upload_dir / "data").write_bytes(body)
    info = info_of(data_dir, url)
    (upload_dir / "info.json").write_text(json.dumps({**info, "offset": len(body),
                                                      "sha256": hashlib.sha256(body).hexdigest()}))
    await client.close()
    return url


async def test_finished_but_unpublished_upload_is_published_at_start(make_client, data_dir):
    body = os.urandom(100_000)
    url = await crashed_before_publishing(make_client, data_dir, body)
    client = await make_client()
    file_id = hashlib.sha256(body).hexdigest()

    # Unasked (no request on the upload): start-up publishes it, and records that in its info last.
    await wait_until(lambda: asyncio.sleep(0, info_of(data_dir, url).get("file_id")),
                     what="start-up to publish the finished upload")
    assert info_of(data_dir, url)["file_id"] == file_id
    assert (await client.get(f"/upload/{file_id}")).status == 200
    assert (await head(client, url)).headers["File-Id"] == file_id


async def test_a_head_before_start_up_publishes_the_upload_gets_its_file_id(make_client, data_dir, monkeypatch):
    """A client resuming right after a restart must not see its upload complete without a File-Id (start-up
    publishes in the background: here it has not come to this upload yet)."""
    body = os.urandom(100_000)
    url = await crashed_before_publishing(make_client, data_dir, body)
    monkeypatch.setattr(Uploads, "recover", lambda self: asyncio.sleep(0, 0))
    client = await make_client()
    file_id = hashlib.sha256(body).hexdigest()
    resp = await head(client, url)
    assert resp.headers["Upload-Offset"] == str(len(body)) and resp.headers["File-Id"] == file_id
    assert (await client.get(f"/upload/{file_id}")).status == 200
    assert (await (await client.get(url, headers=T)).json())["file_id"] == file_id


async def test_expired_upload_is_410_then_removed_by_the_janitor(make_client, data_dir):
    client = await make_client(tus_expiry=3600.0, janitor_interval=3600.0)
    url = await create(client, 10)
    done = await create(client, 3)
    await patch(client, done, 0, b"abc")
    fresh = await create(client, 10)
    assert (await patch(client, url, 0, b"01234")).status == 204
    old = time.time() - 7200
    for u in (url, done):
        info = info_of(data_dir, u)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(old))
        info["updated"] = stamp
        if "completed" in info:
            info["completed"] = stamp
        (data_dir / "uploads" / u.rsplit("/", 1)[1] / "info.json").write_text(json.dumps(info))
    assert (await head(client, url)).status == 410
    resp = await client.get(url)
    assert resp.status == 410 and (await resp.json())["error_message"].startswith("upload expired")
    assert (await patch(client, url, 5, b"56789")).status == 410
    assert (await head(client, done)).status == 200  # finished: still answers until the janitor takes it
    report = await client.app[JANITOR].run_once("test")
    removed = {d.rel for d in report.deletions if d.kind == "tus_uploads"}
    assert removed == {f"uploads/{url.rsplit('/', 1)[1]}", f"uploads/{done.rsplit('/', 1)[1]}"}
    assert (await head(client, url)).status == 404
    assert (await head(client, fresh)).status == 200
    file_id = hashlib.sha256(b"abc").hexdigest()
    assert (await client.get(f"/upload/{file_id}")).status == 200  # the stored file is not the upload


async def test_cors_for_browsers(make_client):
    client = await make_client(token="s3cret")
    origin = {"Origin": "http://app.example"}
    resp = await client.options("/files/", headers={**origin, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "upload-length,tus-resumable"})
    assert resp.status == 204  # a preflight carries no token
    assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("upload-length", "upload-offset", "tus-resumable", "upload-metadata",
                                      "upload-checksum", "authorization"))
    auth = {**origin, "Authorization": "Bearer s3cret"}
    resp = await client.post("/files/", headers={**T, **auth, "Upload-Length": "3"})
    assert resp.status == 201
    exposed = resp.headers["Access-Control-Expose-Headers"]
    assert all(h in exposed for h in ("Location", "Upload-Offset", "Upload-Length", "File-Id", "Upload-Expires"))
    resp = await client.post("/files/", headers={**T, **origin, "Upload-Length": "3"})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "http://app.example"


async def test_method_override_for_clients_without_patch(client):
    url = await create(client, 3)
    resp = await client.post(url, data=b"abc", headers={**OCTETS, "Upload-Offset": "0",
                                                         "X-HTTP-Method-Override": "PATCH"})
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "3"


async def test_disk_full_is_507_with_the_offset_unchanged(aiohttp_client, tmp_path):
    mnt = mount_tmpfs(tmp_path / "fs", "16m")
    try:
        data = mnt / "data"
        data.mkdir()
        client = await aiohttp_client(create_app(Config(data_dir=data, access_log=False, janitor_interval=3600.0,
                                                        min_free="0")))
        body = os.urandom(24 << 20)
        url = await create(client, len(body))
        assert (await patch(client, url, 0, body[:1 << 20])).status == 204
        resp = await patch(client, url, 1 << 20, body[1 << 20:])
        assert resp.status == 507, await resp.text()
        assert "full" in (await resp.json())["error_message"]
        assert (await head(client, url)).headers["Upload-Offset"] == str(1 << 20)
        assert os.path.getsize(data / "uploads" / url.rsplit("/", 1)[1] / "data") == 1 << 20
        assert free_bytes(mnt) > 10 << 20  # the failed chunk's bytes were given back
        await client.close()
    finally:
        umount(mnt)


async def test_a_long_patch_commits_checkpoints_while_it_streams(client, data_dir, monkeypatch):
    """A daemon killed in the middle of one long PATCH keeps what was checkpointed."""
    from storaged.uploads import service
    from tests.helpers import wait_until

    monkeypatch.setattr(service, "CHECKPOINT_SECONDS", 0.0)  # every written buffer is a checkpoint
    body = os.urandom(3 << 20)
    url = await create(client, len(body))
    gate = asyncio.Event()

    async def slow():
        yield body[:(3 << 20) // 2]
        await gate.wait()
        yield body[(3 << 20) // 2:]

    task = asyncio.create_task(client.patch(url, data=slow(), headers={**OCTETS, "Upload-Offset": "0",
                                                                       "Content-Length": str(len(body))}))

    async def checkpointed():
        return info_of(data_dir, url)["offset"] >= 1 << 20
    await wait_until(checkpointed, what="a checkpoint while the PATCH is still open")
    assert not task.done()
    assert int((await head(client, url)).headers["Upload-Offset"]) >= 1 << 20
    gate.set()
    resp = await task
    assert resp.status == 204 and resp.headers["File-Id"] == hashlib.sha256(body).hexdigest()
