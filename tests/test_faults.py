"""Faults behind the daemon's back get clear answers, and re-uploading good bytes heals a damaged object.

Real app on loopback (aiohttp test server), real files; the tree is damaged
the way a failing disk or a careless person would, then the API is asked.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from storaged.config import Config
from storaged.errors import InsufficientStorage, StorageUnavailable, storage_fault
from storaged.families import providers
from storaged.ops.fsck import Fsck
from storaged.store.layout import Layout
from tests.helpers import json_of, wait_until

BODY = b"the good bytes of an upload\n" * 4096


def fsck(root: Path, repair: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    layout, config = Layout(root), Config(data_dir=root)
    code = Fsck(layout, config, providers(layout, config), repair=repair, out=out, err=io.StringIO()).run()
    return code, out.getvalue()


async def upload(client, body: bytes = BODY, name: str = "clip.bin", content_type: str | None = None) -> dict:
    headers = {"Content-Type": content_type} if content_type else None
    resp = await client.post("/upload", params={"name": name}, data=body, headers=headers)
    out = await json_of(resp)
    assert resp.status == 200, out
    return out


def flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0x01]))


def damage(od: Path, how: str) -> None:
    meta = json.loads((od / "meta.json").read_bytes())
    data = od / meta["stored_name"]
    if how == "missing bytes":
        data.unlink()
    elif how == "flipped byte":
        flip_a_byte(data)
    elif how == "truncated bytes":
        os.truncate(data, 100)
    elif how == "missing meta":
        (od / "meta.json").unlink()
    elif how == "half-written meta":
        (od / "meta.json").write_bytes((od / "meta.json").read_bytes()[:20])
    elif how == "broken link":
        (od / "the_file").unlink()
        os.symlink("elsewhere", od / "the_file")
    else:
        raise AssertionError(how)


TROUBLE = {
    "missing bytes": "are missing",
    "flipped byte": "content does not hash to its id",
    "truncated bytes": "meta.json says",
    "missing meta": "meta.json is missing",
    "half-written meta": "meta.json is not valid JSON",
    "broken link": "the_file link points to elsewhere",
}


@pytest.mark.parametrize("how", list(TROUBLE))
async def test_reupload_heals_a_damaged_object(client, data_dir, how, caplog):
    first = await upload(client, name="clip.mp4", content_type="video/quicktime")  # as the uploader said
    oid = first["file_id"]
    # An analysis and a pin on the object: healing must keep them (and the object's directory).
    resp = await client.post("/analyse", json={"file_id": oid, "analysis": "dummy", "args": {"seconds": 0}})
    assert resp.status == 200, await resp.text()
    aid = (await resp.json())["analysis_id"]
    assert (await client.put(f"/upload/{oid}/pin")).status == 200
    od = Layout(data_dir).object_dir(oid)
    damage(od, how)
    if how == "missing meta":
        (od / "notes.txt").write_bytes(b"someone's file")  # without meta.json nothing says it is not the bytes
    assert fsck(data_dir)[0] == 1, "the damage is real: fsck sees it"

    again = await upload(client, name="clip.mp4", content_type="video/quicktime")
    assert again["file_id"] == oid
    assert again["deduplicated"] is False, again
    assert TROUBLE[how] in again["repaired"], again
    assert again["name"] == "clip.mp4" and again["size"] == len(BODY), again
    assert again["content_type"] == "video/quicktime", again
    set_aside = sorted(str(p.relative_to(data_dir)) for p in (data_dir / "lost+found").rglob("*") if p.is_file())
    if set_aside:
        assert sorted(again["repaired"].split("; the damaged files are in ")[1].split(", ")) == set_aside, again
    else:
        assert again["repaired"].endswith("replaced by these bytes"), again
    warned = [r for r in caplog.records if "healed with the bytes of a new upload" in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING"] and oid in warned[0].getMessage() \
        and TROUBLE[how] in warned[0].getMessage()
    if how == "missing meta":
        assert not (od / "notes.txt").exists() and f"lost+found/{oid[:2]}/{oid[2:]}/notes.txt" in set_aside
    meta = await json_of(await client.get(f"/upload/{oid}"))
    assert meta["pinned"] is True and (meta["name"], meta["size"]) == ("clip.mp4", len(BODY)), meta

    resp = await client.get(f"/download/{oid}")
    assert resp.status == 200 and await resp.read() == BODY
    assert (od / "analysis" / aid / "config.json").is_file(), "the object's analysis was lost by the heal"
    code, text = fsck(data_dir)
    assert code == 0, text
    lost = [p for p in (data_dir / "lost+found").rglob("*") if p.is_file()]
    if how in ("flipped byte", "truncated bytes", "half-written meta"):
        assert lost, "the damaged copy was not kept in lost+found/"
        assert all(str(p.relative_to(data_dir)).startswith(f"lost+found/{oid[:2]}/{oid[2:]}/") for p in lost)
    if how == "flipped byte":
        assert hashlib.sha256(lost[0].read_bytes()).hexdigest() != oid
        assert len(lost[0].read_bytes()) == len(BODY)
    assert not list((data_dir / "tmp").iterdir()), "the heal left a temp file"

    # Healed: the next upload of the same bytes is an ordinary dedupe again.
    third = await upload(client)
    assert third["deduplicated"] is True and "repaired" not in third


async def test_a_sound_dedupe_drops_the_new_copy_and_keeps_the_old(client, data_dir):
    first = await upload(client, name="first.bin")
    od = Layout(data_dir).object_dir(first["file_id"])
    before = {p.name: p.stat().st_ino for p in od.iterdir()}
    second = await upload(client, name="second.bin")
    assert second["deduplicated"] is True and "repaired" not in second
    assert second["name"] == "first.bin", "a dedupe answers the stored object's meta"
    assert {p.name: p.stat().st_ino for p in od.iterdir()} == before, "a sound object was rewritten"
    assert not list((data_dir / "tmp").iterdir()), "the new copy's temp file was not dropped"
    assert not (data_dir / "lost+found").exists()


# -- damaged records -----------------------------------------------------------------------

async def _status_of(client, url: str, status: int) -> bool:
    return (await client.get(url)).status == status


async def test_a_half_written_record_answers_a_specific_error_and_listings_say_they_skipped_it(make_client, data_dir):
    client = await make_client()
    ids = []
    for n in range(3):
        resp = await client.post("/sessions", json={"video_url": f"/v{n}.mp4"})
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    await client.close()
    path = data_dir / "sessions" / f"{ids[1]}.json"
    path.write_bytes(path.read_bytes()[:15])  # torn, as a disk fault leaves it
    name = f"sessions/{ids[1]}.json"
    client = await make_client()  # the next start meets it
    # The start trusts the clean stop's snapshot (the directory did not change), then finds the file
    # changed in place behind its back and reads it again.
    await wait_until(lambda: _status_of(client, f"/sessions/{ids[1]}", 500), what="the torn record noticed")

    for method, url, body in (("GET", f"/sessions/{ids[1]}", None),
                              ("PUT", f"/sessions/{ids[1]}", {"video_url": "/x.mp4"}),
                              ("POST", f"/sessions/{ids[1]}/events", {"time": 1, "type": "lap"})):
        resp = await client.request(method, url, json=body)
        out = await json_of(resp)
        assert resp.status == 500, (method, url, out)
        assert name in out["error_message"] and "storaged fsck" in out["error_message"], out
        assert out["damaged"] == name
    assert len(path.read_bytes()) == 15, "a refused update overwrote the evidence"

    resp = await client.get("/sessions")
    assert resp.status == 200
    assert [s["id"] for s in await resp.json()] == [ids[0], ids[2]]
    assert resp.headers["Storaged-Skipped-Records"] == name
    # A listing with nothing damaged carries no such header.
    assert "Storaged-Skipped-Records" not in (await client.get("/races")).headers
    # The next id is past the damaged one: a create never overwrites the evidence.
    resp = await client.post("/sessions", json={"video_url": "/new.mp4"})
    assert (await resp.json())["id"] > ids[2] and len(path.read_bytes()) == 15

    code, text = fsck(data_dir, repair=True)
    assert code == 1 and name in text, text
    assert (data_dir / "lost+found" / name).is_file()
    client = await make_client()
    resp = await client.get(f"/sessions/{ids[1]}")
    assert resp.status == 404
    assert "Storaged-Skipped-Records" not in (await client.get("/sessions")).headers


async def test_a_damaged_object_meta_is_reported_by_the_file_listing_and_named_by_its_get(client, data_dir):
    a = await upload(client, b"a" * 100, "a.bin")
    b = await upload(client, b"b" * 100, "b.bin")
    meta = Layout(data_dir).object_dir(a["file_id"]) / "meta.json"
    meta.write_text("{\"file_id\": ")
    resp = await client.get("/upload")
    assert [f["file_id"] for f in (await resp.json())["files"]] == [b["file_id"]]
    assert resp.headers["Storaged-Skipped-Records"] == f"{a['file_id'][:2]}/{a['file_id'][2:]}/meta.json"
    resp = await client.get(f"/upload/{a['file_id']}")
    out = await json_of(resp)
    assert resp.status == 500 and "meta.json" in out["error_message"] and "fsck" in out["error_message"], out


# -- disk faults: one mapping ------------------------------------------------------------------

@pytest.mark.parametrize("code, cls, status", [
    (errno.ENOSPC, InsufficientStorage, 507), (errno.EDQUOT, InsufficientStorage, 507),
    (errno.EROFS, StorageUnavailable, 503), (errno.EIO, StorageUnavailable, 503)])
def test_disk_faults_map_to_an_answer_naming_the_cause(code, cls, status):
    name = errno.errorcode[code]
    direct = storage_fault(OSError(code, os.strerror(code)))
    assert isinstance(direct, cls) and direct.status == status
    assert f"({name})" in direct.message and direct.extra == {"cause": name}
    # Wrapped by whatever layer met it, the cause is still found.
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError as inner:
            raise RuntimeError("the job could not be written") from inner
    except RuntimeError as outer:
        wrapped = storage_fault(outer)
    assert isinstance(wrapped, cls) and wrapped.extra == {"cause": name}
    assert storage_fault(OSError(errno.ENOENT, "gone")) is None
    assert storage_fault(ValueError("x")) is None


async def test_a_disk_fault_on_any_route_is_answered_by_the_middleware(client, monkeypatch, data_dir):
    """A route with no handling of its own (record create) still answers 503 naming EROFS."""
    import storaged.store.atomic as atomic

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.os, "fsync", read_only)
    resp = await client.post("/sessions", json={"video_url": "/v.mp4"})
    out = await json_of(resp)
    assert resp.status == 503 and out["cause"] == "EROFS" and "read-only" in out["error_message"], out
    monkeypatch.undo()
    assert (await client.post("/sessions", json={"video_url": "/v.mp4"})).status == 201


# -- health ----------------------------------------------------------------------------------

async def test_healthz_turns_503_below_the_free_space_floor(make_client, data_dir):
    low = await make_client(health_min_free=1 << 60)  # more than any disk: always below the floor
    resp = await low.get("/healthz")
    out = await resp.json()
    assert resp.status == 503 and out["ok"] is False, out
    assert any("health_min_free" in p for p in out["problems"]), out
    ok = await make_client(health_min_free=0)
    resp = await ok.get("/healthz")
    out = await resp.json()
    assert resp.status == 200 and out["ok"] is True and "problems" not in out, out


# -- temps a crash left ------------------------------------------------------------------------

async def test_a_running_daemon_sweeps_stale_temps_without_a_restart(make_client, data_dir):
    """A long-running daemon does not keep a crashed write's temp forever (fsck would call it a stray):
    neither in tmp/ nor beside the final name of a record, a meta or a job file."""
    client = await make_client(temp_max_age=2.0)  # swept every second once 2 s old
    user_file = await upload(client, name="notes.tmp")  # a user's file is never taken for a temp
    stored = data_dir / user_file["file_id"][:2] / user_file["file_id"][2:] / "notes.tmp"
    (data_dir / "sessions").mkdir(exist_ok=True)
    stale = [data_dir / "tmp" / "upload-left-by-a-kill.tmp",
             data_dir / "sessions" / ".7.json.0123456789ab.tmp",
             stored.parent / ".meta.json.0123456789ab.tmp"]
    fresh = [data_dir / "tmp" / "upload-in-flight.tmp", data_dir / "sessions" / ".8.json.ba9876543210.tmp"]
    for path in stale + fresh:
        path.write_bytes(b"partial")
    for path in stale + [stored]:
        os.utime(path, (0, os.stat(path).st_mtime - 3600))

    async def swept():
        for path in fresh:
            os.utime(path)  # still being written to
        return not any(path.exists() for path in stale)
    await wait_until(swept, timeout=10, what="the stale temps swept")
    assert all(path.exists() for path in fresh), "a temp in use was swept"
    assert stored.read_bytes() == BODY, "a stored file named *.tmp was swept"
    assert (await client.get("/healthz")).status == 200
