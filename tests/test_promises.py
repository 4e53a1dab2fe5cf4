"""The store's and the settings' promises, stated as tests that fail when the promise is broken.

Each test names a promise a mutation of the code once broke without any test
noticing (lock files deleted, a leaking waiter count, writes that skip fsync,
a directory walk that stops at a stray entry, an unpinned on-disk format,
settings read from ini/env, the interval index's bounds and limit).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import pytest

from storaged import config as cfg
from storaged.errors import BadRequest, DamagedRecord, NotFound, PayloadTooLarge, StoragedError
from storaged.store import atomic, damage
from storaged.store.atomic import PathLock, SharedExclusive, async_lock, dumps, write_bytes, write_json
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, clean_name, safe_filename, verify_object
from storaged.store.records import RecordStore
from storaged.store.smallobjects import SmallObject, SmallObjects, read_verified
from storaged.store.timeindex import TimeIndex
from tests.helpers import gate_dir_fsyncs

# -- locks -----------------------------------------------------------------------------------


async def test_lock_files_are_kept_under_load(data_dir):
    """A lock file is never unlinked while the daemon runs: it keeps one inode through every hand-over."""
    layout = Layout(data_dir)
    store = RecordStore(layout, "sessions")
    record = await store.create({"n": 0})
    lock_file = layout.lock_for("sessions", str(record["id"]))
    seen: set[int | None] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            try:
                seen.add(os.stat(lock_file).st_ino)
            except FileNotFoundError:
                seen.add(None)
            await asyncio.sleep(0)

    async def bump(_: int) -> None:
        await store.update(record["id"], lambda r: {**r, "n": r["n"] + 1})

    await bump(0)  # the first lock creates the file
    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(bump(i) for i in range(40)))
    done.set()
    await watcher
    assert (await store.get(record["id"]))["n"] == 41
    assert None not in seen, "the lock file was missing at some point under load"
    assert len(seen) == 1, f"the lock file was recreated ({len(seen)} inodes)"
    assert lock_file.exists()
    # filelock itself is told to keep it: on Unix that also refuses its soft-lock fallback (on a
    # filesystem without flock), whose release would unlink the file a waiter holds open.
    async with async_lock(lock_file) as held:
        assert held._file.preserve_lock_file is True
    assert atomic.sync_lock(lock_file).preserve_lock_file is True
    # The same for objects: two puts of one id leave its lock file in place.
    objects = ObjectStore(layout, max_size=1 << 20)
    layout.ensure()

    async def chunks():
        yield b"same bytes"
    a, b = await asyncio.gather(objects.put(chunks(), "a"), objects.put(chunks(), "b"))
    assert layout.object_lock(a["file_id"]).exists()


async def test_path_lock_waiter_count_does_not_leak(tmp_path):
    """The per-path entry counts holders and waiters, and goes away with the last of them."""
    path = tmp_path / "locks" / "thing.lock"
    key_of = lambda: (id(asyncio.get_running_loop()), str(path))  # noqa: E731
    holder_in, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with async_lock(path):
            holder_in.set()
            await release.wait()

    async def waiter() -> None:
        async with async_lock(path):
            pass

    held = asyncio.create_task(holder())
    await holder_in.wait()
    waiters = [asyncio.create_task(waiter()) for _ in range(3)]
    doomed = asyncio.create_task(waiter())
    for _ in range(5):
        await asyncio.sleep(0)
    assert PathLock._local[key_of()][1] == 5, "holder + 4 waiters"
    doomed.cancel()  # a waiter that gives up must not stay counted
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert PathLock._local[key_of()][1] == 4
    release.set()
    await asyncio.gather(held, *waiters)
    assert key_of() not in PathLock._local, "the entry outlived its last user"
    # A lock that times out on the file (held by another process) is not counted either.
    other = atomic.sync_lock(path)
    other.acquire()
    try:
        with pytest.raises(Exception):
            async with PathLock(path, timeout=0.05):
                pass
    finally:
        other.release()
    assert key_of() not in PathLock._local


async def test_a_bounded_lock_wait_gives_up_on_either_queue_and_gets_what_is_left(tmp_path):
    """The janitor and fsck take locks with a timeout: 0 skips a busy thing at once, whether a coroutine
    of this process or another process holds it; a longer one covers the in-process queue and the file
    lock together, and the file lock gets the time the queue left."""
    from filelock import Timeout
    path = tmp_path / "locks" / "thing.lock"
    key = (id(asyncio.get_running_loop()), str(path))
    async with async_lock(path, timeout=0):  # free: taken at once
        with pytest.raises(Timeout) as caught:  # held by a coroutine here: skipped, not waited for
            await asyncio.wait_for(async_lock(path, timeout=0).__aenter__(), 10)
        assert caught.value.lock_file == str(path)
        assert PathLock._local[key][1] == 1, "the coroutine that gave up is still counted"
    assert key not in PathLock._local
    other = atomic.sync_lock(path)  # another process's hold (a second fd: flock excludes it too)
    other.acquire()
    try:
        with pytest.raises(Timeout):
            await asyncio.wait_for(async_lock(path, timeout=0).__aenter__(), 10)
    finally:
        other.release()
    assert key not in PathLock._local
    # A free queue leaves the whole bound to the file lock: it is taken once the other process lets go.
    other.acquire()
    asyncio.get_running_loop().call_later(0.05, other.release)
    async with async_lock(path, timeout=30) as held:
        assert held._file.is_locked
    assert key not in PathLock._local


async def test_a_group_commit_whose_fsync_fails_fails_its_writers_and_later_ones_get_their_own(tmp_path, monkeypatch):
    calls, gate = gate_dir_fsyncs(monkeypatch, first_fails=True)
    sync = atomic.DirSync(tmp_path)
    first = asyncio.create_task(sync.sync())
    while not calls:
        await asyncio.sleep(0.001)
    second = asyncio.create_task(sync.sync())  # renamed after the failing fsync began
    await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(OSError):
        await first
    await second
    assert len(calls) == 2, "the second writer was answered without an fsync of its own"


async def test_shared_holders_overlap_an_exclusive_one_is_alone_and_writers_go_first(tmp_path):
    """A session's membership lock: adders share it, a split or a delete holds it alone, and a writer
    that waits is not starved by readers that keep coming."""
    se = SharedExclusive(lambda name: tmp_path / "locks" / f"{name}.lock")
    inside: set[str] = set()
    go: dict[str, asyncio.Event] = {}

    def holder(who: str, exclusive: bool) -> asyncio.Task:
        go[who] = asyncio.Event()

        async def hold() -> None:
            async with (se.exclusive if exclusive else se.shared)("s"):
                inside.add(who)
                await go[who].wait()
                inside.discard(who)
        return asyncio.create_task(hold())

    async def settle() -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def until(expected: set[str], why: str) -> None:
        # The exclusive holder also takes its file lock in a thread: poll, with a deadline.
        for _ in range(500):
            if inside == expected:
                return
            await asyncio.sleep(0.01)
        assert inside == expected, why

    async def stays(expected: set[str], why: str) -> None:
        # Long enough for a wrongly admitted writer to get through its file lock's thread too.
        for _ in range(30):
            await asyncio.sleep(0.01)
            assert inside == expected, why

    tasks = [holder("r1", False), holder("r2", False)]
    await settle()
    assert inside == {"r1", "r2"}, "shared holders must hold at once"
    tasks += [holder("w1", True), holder("w2", True)]
    await stays({"r1", "r2"}, "an exclusive holder must wait for the shared ones")
    tasks[2].cancel()  # w1 gives up; w2 still waits, so new readers still queue behind it
    tasks += [holder("r3", False)]
    await settle()
    assert inside == {"r1", "r2"}, "a reader overtook a waiting writer"
    assert tasks[2].cancelled(), "giving up must end in the cancellation, nothing else"
    go["r1"].set()
    await stays({"r2"}, "the writer came in while a shared holder still held")
    go["r2"].set()
    await until({"w2"}, "the writer holds alone")
    with pytest.raises(Exception):  # ... against other processes too: it holds the file lock
        atomic.sync_lock(tmp_path / "locks" / "s.lock", timeout=0).acquire()
    go["w2"].set()
    await until({"r3"}, "the reader that queued behind the writer comes in after it")
    go["r3"].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert se._state == {}, "the per-name state outlived its last user"
    # A writer that gives up while another process (fsck --repair) holds the file lock leaves nothing.
    other = atomic.sync_lock(tmp_path / "locks" / "s.lock")
    other.acquire()
    try:
        writer = holder("w3", True)
        await stays(set(), "the writer came in while another process held the file lock")
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert writer.cancelled()
    finally:
        other.release()
    assert se._state == {}
    reader = holder("r4", False)
    await until({"r4"}, "a reader after a writer that gave up")
    go["r4"].set()
    await reader


# -- durable writes ------------------------------------------------------------------------------


class SyscallTrace:
    """Records fsync (by path), rename and link calls in order."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_rename, real_link = os.fsync, os.rename, os.link

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def rename(src, dst, **kw):
            self.events.append(("rename", os.fspath(dst)))
            return real_rename(src, dst, **kw)

        def link(src, dst, **kw):
            self.events.append(("link", os.fspath(dst)))
            return real_link(src, dst, **kw)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "link", link)

    def index(self, event: tuple[str, str]) -> int:
        assert event in self.events, f"{event} not in {self.events}"
        return self.events.index(event)


@pytest.mark.parametrize("write", [lambda p: write_json(p, {"a": 1}), lambda p: write_bytes(p, b'{"a": 1}')],
                         ids=["write_json", "write_bytes"])
def test_writes_are_durable_by_default_file_then_rename_then_directory(tmp_path, monkeypatch, write):
    trace = SyscallTrace(monkeypatch)
    final = tmp_path / "record.json"
    write(final)  # no durable= argument: the default must be durable
    renamed = trace.index(("rename", str(final)))
    synced_file = [i for i, (op, p) in enumerate(trace.events)
                   if op == "fsync" and Path(p).name.startswith(".record.json.")]
    assert synced_file and synced_file[0] < renamed, "the temp file was not fsynced before the rename"
    assert trace.index(("fsync", str(tmp_path))) > renamed, "the directory was not fsynced after the rename"
    assert json.loads(final.read_bytes()) == {"a": 1}


def test_a_hint_written_with_durable_false_skips_fsync(tmp_path, monkeypatch):
    trace = SyscallTrace(monkeypatch)
    write_bytes(tmp_path / "hint", b"1", durable=False)
    assert [op for op, _ in trace.events] == ["rename"]


def test_an_exclusive_write_never_replaces_and_makes_what_it_creates_durable(tmp_path, monkeypatch):
    """A name that must never be overwritten (a motion image named by its capture time)."""
    trace = SyscallTrace(monkeypatch)
    final = tmp_path / "2024-01-01T00-00-00.000Z.jpg"
    assert write_bytes(final, b"first", exclusive=True) is True
    linked = trace.index(("link", str(final)))
    assert any(op == "fsync" and Path(p).name.startswith(f".{final.name}.") for op, p in trace.events[:linked]), \
        "the bytes were not fsynced before they got their name"
    assert trace.index(("fsync", str(tmp_path))) > linked, "the new name was not made durable"
    assert write_bytes(final, b"second", exclusive=True) is False, "an existing name was reported created"
    assert final.read_bytes() == b"first"
    assert os.listdir(tmp_path) == [final.name], "a temp file was left behind"
    assert write_bytes(tmp_path / "replaceable", b"x") is True, "a plain write answers that it wrote"


def test_a_write_that_fails_for_any_reason_leaves_no_temp(tmp_path):
    with pytest.raises(TypeError):
        write_bytes(tmp_path / "record.json", [b"{", "not bytes", b"}"])
    assert os.listdir(tmp_path) == []


def test_trash_removes_the_thing_whole_and_never_what_a_link_points_at(data_dir, monkeypatch):
    layout = Layout(data_dir)
    layout.ensure()
    outside = data_dir.parent / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "precious").write_text("not ours")
    things = data_dir / "things"
    (things / "a-dir" / "nested").mkdir(parents=True)
    (things / "a-dir" / "nested" / "f").write_text("x")
    (things / "a-file").write_text("y")
    (things / "a-link").symlink_to(outside / "keep")
    trace = SyscallTrace(monkeypatch)
    for name in ("a-dir", "a-file", "a-link"):
        atomic.trash(things / name, layout.tmp)
        moved = [i for i, (op, p) in enumerate(trace.events) if op == "rename" and Path(p).parent == layout.tmp]
        assert moved and trace.index(("fsync", str(things))) > moved[-1], "the disappearance is not durable"
        trace.events.clear()
        assert not os.path.lexists(things / name)
        assert os.listdir(layout.tmp) == [], f"{name}: left in tmp"
    assert (outside / "keep" / "precious").read_text() == "not ours"


@pytest.mark.parametrize("code, status", [(errno.ENOSPC, 507), (errno.EROFS, 503), (errno.EIO, 503)])
def test_a_disk_fault_in_a_write_is_named_and_leaves_no_temp(tmp_path, monkeypatch, code, status):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoragedError) as caught:
        write_bytes(tmp_path / "record.json", b"{}")
    assert caught.value.status == status and errno.errorcode[code] in str(caught.value)
    assert os.listdir(tmp_path) == []


async def test_record_creates_and_object_puts_are_fsynced(data_dir, monkeypatch):
    layout = Layout(data_dir)
    layout.ensure()
    store = RecordStore(layout, "events")
    trace = SyscallTrace(monkeypatch)
    record = await store.create({"type": "lap"})
    path = store.path(record["id"])
    renamed = trace.index(("rename", str(path)))
    assert trace.index(("fsync", str(path.parent))) > renamed

    objects = ObjectStore(layout, max_size=1 << 20)

    async def chunks():
        yield b"durable bytes"
    meta = await objects.put(chunks(), "d.bin")
    od = layout.object_dir(meta["file_id"])
    renamed = trace.index(("rename", str(od)))
    assert trace.index(("fsync", str(od.parent))) > renamed, "the fan-out directory was not fsynced"
    upload_syncs = [i for i, (op, p) in enumerate(trace.events) if op == "fsync" and "/tmp/upload-" in p]
    assert upload_syncs and upload_syncs[0] < renamed, "the uploaded bytes were not fsynced before the commit"


# -- layout walk ---------------------------------------------------------------------------------

def test_object_ids_walk_past_every_stray_entry(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    ids = ["00" + "1" * 62, "7f" + "2" * 62, "7f" + "3" * 62, "7f" + "9" * 62, "7f" + "a" * 62,
           "ff" + "4" * 62]
    # Created out of order (the directory listing's order is the filesystem's, not the ids').
    for oid in ids[::2] + ids[1::2][::-1]:
        layout.object_dir(oid).mkdir(parents=True)
    # Strays that sort before, between and after the objects.
    (data_dir / "0a").write_text("a file where a fan-out directory would be")
    (data_dir / "1junk").mkdir()
    (data_dir / "7f" / "0-not-an-id").mkdir()
    (data_dir / "7f" / "zz").write_text("junk")
    (data_dir / "ab").mkdir()
    (data_dir / "lost+found").mkdir()
    (data_dir / "sessions").mkdir()
    # A one-letter directory holding 63 hex digits would spell an id if it were taken for a fan-out.
    (data_dir / "c" / ("d" * 63)).mkdir(parents=True)
    assert list(layout.object_ids()) == ids


def test_the_on_disk_layout_is_pinned(data_dir):
    """Existing data roots must stay readable: where objects, their analyses, locks and temps live."""
    layout = Layout(data_dir)
    oid = "ab" + "c" * 62
    assert layout.object_dir(oid) == data_dir / "ab" / ("c" * 62)
    assert layout.analyses_dir(oid) == data_dir / "ab" / ("c" * 62) / "analysis"
    assert layout.object_lock(oid) == data_dir / "locks" / "objects" / f"{oid}.lock"
    assert layout.lock_for("sessions", "7") == data_dir / "locks" / "sessions" / "7.lock"
    assert (layout.tmp, layout.locks, layout.lost_found, layout.cache, layout.family_dir("events")) == \
        (data_dir / "tmp", data_dir / "locks", data_dir / "lost+found", data_dir / "cache", data_dir / "events")
    layout.ensure()
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == \
        ["locks", "locks/objects", "tmp"]
    deep = Layout(data_dir.parent / "new" / "disk" / "data")  # a data root whose parents do not exist yet
    deep.ensure()
    assert deep.tmp.is_dir() and (deep.locks / "objects").is_dir()


def test_lost_and_found_never_reuses_a_name(data_dir):
    layout = Layout(data_dir)
    damaged = data_dir / "sessions" / "1.json"
    names = []
    for _ in range(3):
        dest = layout.lost_found_for(damaged)
        dest.write_text("set aside")
        names.append(os.path.relpath(dest, layout.lost_found))
    assert names == ["sessions/1.json", "sessions/1.json.1", "sessions/1.json.2"]


# -- small objects in memory ----------------------------------------------------------------------

def test_small_objects_stay_within_budget_least_recently_served_first_and_forget_wins_a_race():
    cache = SmallObjects(budget=100, max_object=40)

    def fill(oid: str, size: int) -> None:
        cache.put(oid, SmallObject(b"x" * size, 0, "application/octet-stream"), cache.generation())
    fill("a", 40)
    fill("b", 40)
    fill("a", 40)  # already held: not counted twice
    assert cache.held == 80
    assert cache.get("a") is not None  # "a" is now the most recently served
    fill("c", 30)
    assert cache.held <= 100 and cache.get("b") is None and cache.get("a") is not None
    assert cache.held == 70 and (cache.hits, cache.misses) == (2, 1)
    fill("big", 41)
    assert cache.get("big") is None, "an object above max_object is held"
    cache.forget("a")
    assert cache.get("a") is None and cache.held == 30
    started = cache.generation()  # a fill that read its bytes before a delete of the object ...
    cache.forget("d")
    cache.put("d", SmallObject(b"old", 0, "text/plain"), started)
    assert cache.get("d") is None, "... must not put them back"
    full = SmallObjects(budget=100, max_object=50)
    for oid in ("x", "y"):
        full.put(oid, SmallObject(b"z" * 50, 0, "text/plain"), full.generation())
    assert full.held == 100 and full.get("x") is not None, "exactly the budget is within it"
    off = SmallObjects(budget=0, max_object=1 << 20)
    off.put("e", SmallObject(b"e", 0, "text/plain"), off.generation())
    assert off.get("e") is None and off.held == 0


def test_only_bytes_that_hash_to_their_id_are_read_for_the_cache(tmp_path):
    body = b"small object bytes"
    oid = hashlib.sha256(body).hexdigest()
    path = tmp_path / "bytes"
    path.write_bytes(body)
    os.utime(path, (1_700_000_000.7, 1_700_000_000.7))
    assert read_verified(path, oid, limit=len(body)) == (body, 1_700_000_000)
    assert read_verified(path, oid, limit=len(body) - 1) is None, "larger than the limit"
    path.write_bytes(b"Small object bytes")
    assert read_verified(path, oid, limit=1 << 20) is None, "a flipped byte"
    path.write_bytes(body[:-1])
    assert read_verified(path, oid, limit=1 << 20) is None, "a truncated copy"


# -- the object store's reads ------------------------------------------------------------------------

def object_store(root: Path, small: SmallObjects | None = None) -> ObjectStore:
    layout = Layout(root)
    layout.ensure()
    return ObjectStore(layout, max_size=1 << 20, small=small)


async def put_bytes(store: ObjectStore, body: bytes, name: str) -> str:
    async def chunks():
        yield body
    return (await store.put(chunks(), name))["file_id"]


def replace_bytes(path: Path, body: bytes) -> None:
    """Bytes changed behind the daemon's back (a new inode: a stored file may be read-only)."""
    path.unlink()
    path.write_bytes(body)


async def test_a_small_object_is_served_from_memory_once_verified_and_forgotten_when_deleted(tmp_path):
    store = object_store(tmp_path, SmallObjects(budget=1 << 16, max_object=1 << 10))
    oid = await put_bytes(store, b"a small object", "s.txt")
    meta = await store.meta(oid)
    path = store.data_path(oid, meta)
    first = await store.small_object(oid, meta, "text/plain")
    assert (first.data, first.mtime, first.content_type) == (b"a small object", int(path.stat().st_mtime), "text/plain")
    path.unlink()  # from memory from now on
    assert await store.small_object(oid, meta, "text/plain") is first
    await store.delete(oid)
    assert store.small.get(oid) is None, "a deleted object is still served from memory"
    assert await put_bytes(store, b"a small object", "s.txt") == oid
    assert (await store.small_object(oid, await store.meta(oid), "text/plain")).data == b"a small object"

    damaged = await put_bytes(store, b"another small object", "o.txt")
    dmeta = await store.meta(damaged)
    replace_bytes(store.data_path(damaged, dmeta), b"Another small object")
    assert await store.small_object(damaged, dmeta, "text/plain") is None, "bytes that do not hash were served"
    assert store.small.get(damaged) is None
    big = await put_bytes(store, b"x" * 2048, "big.bin")
    assert await store.small_object(big, await store.meta(big), "application/octet-stream") is None
    assert store.small.get(big) is None, "larger than max_object, yet cached"


async def test_a_damaged_or_missing_meta_is_named_with_the_way_to_repair_it(tmp_path):
    store = object_store(tmp_path)
    oid = await put_bytes(store, b"bytes with a meta", "m.txt")
    meta_path = store.layout.object_dir(oid) / "meta.json"
    good = meta_path.read_bytes()
    meta_path.write_bytes(good[:20])
    with pytest.raises(DamagedRecord) as caught:
        await store.meta(oid)
    assert caught.value.extra["damaged"] == f"{oid[:2]}/{oid[2:]}/meta.json"
    assert "not valid JSON" in str(caught.value) and "uploading the same bytes again also repairs it" in str(caught.value)
    meta_path.write_text('["a list"]')
    with pytest.raises(DamagedRecord, match=f"damaged record {oid[:2]}/{oid[2:]}/meta.json: not an object's meta"):
        await store.meta(oid)
    meta_path.unlink()
    with pytest.raises(NotFound, match=f"file not found: {oid}"):
        await store.meta(oid)


@pytest.mark.parametrize("stored_name", ["../../../etc/passwd", "a/b", "", ".", "..", 7])
def test_a_meta_whose_stored_name_leaves_the_object_is_damage(tmp_path, stored_name):
    od = tmp_path / "od"
    od.mkdir()
    (od / "meta.json").write_text(json.dumps({"stored_name": stored_name, "size": 0}))
    assert verify_object(od, "0" * 64) == (0, "meta.json has no usable stored_name")


async def test_the_object_listing_pages_by_id_and_skips_what_it_cannot_read(tmp_path):
    store = object_store(tmp_path)
    ids = sorted([await put_bytes(store, f"object {n}".encode(), f"{n}.txt") for n in range(5)])
    page = await store.list(limit=2)
    assert [m["file_id"] for m in page["files"]] == ids[:2] and page["next_cursor"] == ids[1]
    walked, after = [], None
    while True:
        page = await store.list(limit=2, after=after)
        walked += [m["file_id"] for m in page["files"]]
        if page["next_cursor"] is None:
            break
        after = page["next_cursor"]
    assert walked == ids
    (store.layout.object_dir(ids[2]) / "meta.json").unlink()  # as if deleted between the listing and the read
    assert [m["file_id"] for m in (await store.list(limit=10))["files"]] == ids[:2] + ids[3:]
    (store.layout.object_dir(ids[2]) / "meta.json").write_text("{")
    found: list[str] = []
    token = damage.SKIPPED.set(found)
    try:
        listed = await store.list(limit=10)
    finally:
        damage.SKIPPED.reset(token)
    assert [m["file_id"] for m in listed["files"]] == ids[:2] + ids[3:]
    assert found == [f"{ids[2][:2]}/{ids[2][2:]}/meta.json"]
    with pytest.raises(BadRequest, match="malformed cursor: expected a file_id"):
        await store.list(limit=2, after="not-an-id")


@pytest.mark.parametrize("given, kept, stored", [
    (None, "file", "file"), ("", "file", "file"), ("..", "file", "file"), (" . ", "file", "file"),
    ("a/b/../c.MP4", "c.MP4", "c.mp4"), ("C:\\x\\evil.exe", "evil.exe", "evil.exe"),
    (".hidden", "hidden", "hidden"), ("r\u00e9 sum\u00e9.pdf", "r\u00e9 sum\u00e9.pdf", "re_sume.pdf"),
    ("bad\x00name\x1b.mp4", "badname.mp4", "badname.mp4"), ("\u65e5\u672c.mkv", "\u65e5\u672c.mkv", "file.mkv"),
    ("-_.weird._-.MoV", "-_.weird._-.MoV", "weird.mov"), ("archive.tar.gz", "archive.tar.gz", "archive.tar.gz"),
    ("  spaced  .txt", "spaced  .txt", "spaced.txt"), ("a." + "e" * 30, "a." + "e" * 30, "a." + "e" * 16),
    ("meta.json", "meta.json", "file_meta.json"), ("the_file", "the_file", "file_the_file"),
    ("analysis", "analysis", "file_analysis"), ("x\r\nSet-Cookie: a=b.mp4", "xSet-Cookie: a=b.mp4", "xSet-Cookie_a_b.mp4"),
    ("cafe\u0301.txt", "caf\u00e9.txt", "cafe.txt"),
])
def test_an_upload_name_is_kept_clean_and_stored_under_a_safe_ascii_name(given, kept, stored):
    assert (clean_name(given), safe_filename(given)) == (kept, stored)


def test_a_long_upload_name_is_cut_in_its_stem_and_keeps_its_extension():
    """A 5,000-character name keeps its extension (the served type comes from the stored name)."""
    kept = clean_name("a" * 5000 + ".mp4")
    assert len(kept) == 255 and kept.endswith("a.mp4")
    assert safe_filename("a" * 5000 + ".mp4") == "a" * 100 + ".mp4"
    assert clean_name("b" * 300) == "b" * 255, "no extension: cut at the bound"
    assert len(clean_name("c" * 300 + "." + "x" * 40)) == 255, "no extension worth keeping: cut at the bound"


async def test_an_upload_in_many_small_chunks_is_stored_whole_with_its_type_up_to_the_limit(tmp_path):
    """Chunks smaller than the write buffer are gathered before each write: every byte reaches the file and
    the hash, in order; exactly ``max_size`` bytes is allowed, one more is refused and leaves nothing."""
    layout = Layout(tmp_path)
    layout.ensure()
    store = ObjectStore(layout, max_size=1000, chunk_size=256)
    parts = [bytes([65 + n % 26]) * 100 for n in range(10)]  # 1000 bytes in 100-byte chunks

    async def chunks(items):
        for item in items:
            yield item
    meta = await store.put(chunks(parts), "whole.bin", "video/quicktime")
    body = b"".join(parts)
    assert meta["file_id"] == hashlib.sha256(body).hexdigest() and meta["size"] == 1000
    assert store.data_path(meta["file_id"], meta).read_bytes() == body
    assert meta["content_type"] == "video/quicktime" and meta["deduplicated"] is False
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 1000 bytes"):
        await store.put(chunks([*parts, b"!"]), "over.bin")
    assert os.listdir(layout.tmp) == [] and len(list(layout.object_ids())) == 1


def test_a_batch_of_files_is_stored_in_order_with_names_and_types_and_repeats_deduplicated(tmp_path):
    """put_files_blocking (a worker's clips): each answer in the order given; the second copy of the same
    bytes in one batch answers the first's object as deduplicated; every temp is gone."""
    layout = Layout(tmp_path)
    layout.ensure()
    store = ObjectStore(layout, max_size=100)
    srcs = []
    for n, body in enumerate([b"first clip", b"second clip", b"first clip"]):
        srcs.append(layout.tmp / f"src{n}")
        srcs[-1].write_bytes(body)
    out = store.put_files_blocking([(srcs[0], "a.mp4", "video/mp4"), (srcs[1], "b.mkv", "video/x-matroska"),
                                    (srcs[2], "c.mp4", None)], threads=2)
    assert [m["file_id"] for m in out] == [hashlib.sha256(b).hexdigest()
                                           for b in (b"first clip", b"second clip", b"first clip")]
    assert [(m["name"], m["content_type"], m["size"], m["deduplicated"]) for m in out] == \
        [("a.mp4", "video/mp4", 10, False), ("b.mkv", "video/x-matroska", 11, False), ("a.mp4", "video/mp4", 10, True)]
    assert [store.data_path(m["file_id"], m).read_bytes() for m in out] == [b"first clip", b"second clip", b"first clip"]
    assert os.listdir(layout.tmp) == [], "a batch left temps behind"
    big = layout.tmp / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(PayloadTooLarge):
        store.put_files_blocking([(big, "big.bin", None)])
    exact = layout.tmp / "exact"
    exact.write_bytes(b"y" * 100)
    assert store.put_files_blocking([(exact, "exact.bin", None)])[0]["size"] == 100


def test_the_temp_sweep_removes_old_temps_anywhere_names_each_and_leaves_young_ones(tmp_path):
    store = object_store(tmp_path)
    root = store.layout.root
    old_file, old_dir, young = store.layout.tmp / "upload-1.tmp", store.layout.tmp / "trash-1", store.layout.tmp / "upload-2.tmp"
    old_file.write_bytes(b"partial")
    old_dir.mkdir()
    (old_dir / "inside").write_bytes(b"x")
    young.write_bytes(b"in flight")
    (root / "sessions").mkdir()
    beside = root / "sessions" / ".7.json.0123abcd.tmp"
    beside.write_text("{")
    record = root / "sessions" / "7.json"
    record.write_text("{}")
    for path in (old_file, old_dir, beside, record):
        t = time.time() - 3600
        os.utime(path, (t, t))
    removed = store.sweep_temps(max_age=60)
    assert sorted(removed) == sorted(["upload-1.tmp", "trash-1", "sessions/.7.json.0123abcd.tmp"])
    assert not old_file.exists() and not old_dir.exists() and not beside.exists()
    assert young.exists() and record.exists(), "a young temp or a record was swept"
    assert store.sweep_temps(max_age=60) == []


# -- damaged records met by a listing -------------------------------------------------------------

def test_a_skipped_damaged_record_is_reported_to_the_request_and_logged_once(caplog):
    name = f"sessions/{secrets.token_hex(4)}.json"  # one warning per file per process: a fresh name
    found: list[str] = []
    token = damage.SKIPPED.set(found)
    try:
        with caplog.at_level(logging.WARNING, logger="storaged.store"):
            damage.skipped(name, "not valid JSON")
            damage.skipped(name, "not valid JSON")  # listings are polled: the log says it once
    finally:
        damage.SKIPPED.reset(token)
    assert found == [name, name], "each listing that skipped it reports it"
    messages = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert messages == [f"skipped damaged record {name} (not valid JSON); run `storaged fsck`"]
    assert caplog.records[-1].levelno == logging.WARNING
    damage.skipped(name + ".other", "empty")  # outside a request: only logged
    assert found == [name, name]


# -- on-disk JSON format -------------------------------------------------------------------------

def test_on_disk_json_format_is_pinned(data_dir):
    """Sorted keys, two-space indent, UTF-8 (not \\u escapes), one trailing newline."""
    assert dumps({"b": [1, 2], "a": "é"}) == '{\n  "a": "é",\n  "b": [\n    1,\n    2\n  ]\n}\n'.encode()


async def test_records_and_meta_are_written_in_that_format(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    store = RecordStore(layout, "sessions")
    record = await store.create({"video_url": "/vidéo.mp4", "created": "2024-01-01T00:00:00Z"})
    assert store.path(record["id"]).read_bytes() == (
        '{\n  "created": "2024-01-01T00:00:00Z",\n  "id": %d,\n  "video_url": "/vidéo.mp4"\n}\n'
        % record["id"]).encode()

    async def chunks():
        yield b"x"
    meta = await ObjectStore(layout, max_size=10).put(chunks(), "x.txt")
    raw = (layout.object_dir(meta["file_id"]) / "meta.json").read_bytes()
    stored = {k: v for k, v in meta.items() if k != "deduplicated"}
    assert raw == dumps(stored) and list(json.loads(raw)) == sorted(stored)


# -- settings ---------------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("raw, value", [("yes", True), ("on", True), ("true", True), ("1", True),
                                        ("no", False), ("off", False), ("false", False), ("0", False)])
def test_booleans_from_ini_and_env(tmp_path, raw, value):
    ini = tmp_path / "s.ini"
    ini.write_text(f"[storaged]\naccess_log = {raw}\njob_zygote = {raw}\n")
    conf = cfg.load(parse(["--config", str(ini)]), env={})
    assert conf.access_log is value and conf.job_zygote is value
    conf = cfg.load(parse([]), env={"STORAGED_ACCESS_LOG": raw, "STORAGED_JOB_ZYGOTE": raw})
    assert conf.access_log is value and conf.job_zygote is value


def test_a_bad_boolean_names_the_setting(tmp_path):
    with pytest.raises(cfg.ConfigError, match="access_log"):
        cfg.load(parse([]), env={"STORAGED_ACCESS_LOG": "maybe"})


def test_durations_and_paths_from_ini_and_env(tmp_path):
    ini = tmp_path / "s.ini"
    ini.write_text("[storaged]\nshutdown_timeout = 90s\njanitor_interval = 15m\ntemp_max_age = 2h\n"
                   "camera_output_expiry = 1d\ndata_dir = /srv/from-ini\n")
    conf = cfg.load(parse(["--config", str(ini)]), env={})
    assert (conf.shutdown_timeout, conf.janitor_interval, conf.temp_max_age, conf.camera_output_expiry) == \
        (90.0, 900.0, 7200.0, 86400.0)
    assert conf.data_dir == Path("/srv/from-ini") and isinstance(conf.data_dir, Path)
    conf = cfg.load(parse(["--config", str(ini)]),
                    env={"STORAGED_SHUTDOWN_TIMEOUT": "5m", "STORAGED_DATA_DIR": "/srv/from-env"})
    assert conf.shutdown_timeout == 300.0 and conf.janitor_interval == 900.0
    assert conf.data_dir == Path("/srv/from-env") and isinstance(conf.data_dir, Path)
    with pytest.raises(cfg.ConfigError, match="shutdown_timeout"):
        cfg.load(parse([]), env={"STORAGED_SHUTDOWN_TIMEOUT": "soon"})


def test_the_default_ini_is_read_when_present_and_nothing_else_is_named(tmp_path, monkeypatch):
    assert cfg.DEFAULT_INI == Path("/etc/storaged/storaged.ini")
    fallback = tmp_path / "etc-storaged.ini"
    monkeypatch.setattr(cfg, "DEFAULT_INI", fallback)
    assert cfg.load(parse([]), env={}).port == 8064  # absent: defaults
    fallback.write_text("[storaged]\nport = 9100\naccess_log = on\n")
    conf = cfg.load(parse([]), env={})
    assert conf.port == 9100 and conf.access_log is True
    named = tmp_path / "named.ini"
    named.write_text("[storaged]\nport = 9200\n")
    assert cfg.load(parse(["--config", str(named)]), env={}).port == 9200, "--config replaces the fallback"
    assert cfg.load(parse([]), env={"STORAGED_CONFIG": str(named)}).port == 9200
    assert cfg.load(parse([]), env={"STORAGED_PORT": "9300"}).port == 9300


def test_every_setting_is_a_command_line_flag_that_sets_it():
    """`--name-with-dashes VALUE` sets every setting (and `--x` / `--no-x` every boolean); `--help` shows each."""
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    helptext = " ".join(parser.format_help().split())
    assert f"default {cfg.DEFAULT_INI} when present" in helptext
    for f in dataclasses.fields(cfg.Config):
        flag = "--" + f.name.replace("_", "-")
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert flag in helptext and first_words in helptext, f"{flag} or its help is missing from --help"
        if f.type == "bool":
            for argv, value in (([flag], True), ([flag, "off"], False), (["--no-" + flag[2:]], False)):
                assert getattr(cfg.load(parse(argv), env={}), f.name) is value, argv
            assert getattr(cfg.load(parse([]), env={f"STORAGED_{f.name.upper()}": "on"}), f.name) is True, \
                "an unset boolean flag hides the environment"
            continue
        raw, value = {"size": ("3k", 3072), "duration": ("2m", 120.0)}.get(f.metadata["kind"], (None, None))
        if raw is None:
            raw, value = {"int": ("7", 7), "float": ("0.25", 0.25), "Path": ("/srv/x", Path("/srv/x"))}.get(
                f.type, ("text 50%", "text 50%"))
        conf = cfg.load(parse([flag, raw]), env={})
        assert getattr(conf, f.name) == value and type(getattr(conf, f.name)) is type(value), flag


def test_ini_keys_may_use_dashes_and_any_environment_order_is_read(tmp_path):
    ini = tmp_path / "s.ini"
    ini.write_text("[storaged]\nmax-upload-size = 1G\nlive_window = 5m\n")
    conf = cfg.load(parse(["--config", str(ini)]), env={})
    assert (conf.max_upload_size, conf.live_window) == (1024**3, 300.0)
    env = {"HOME": "/root", "STORAGED_PORT": "9400", "LANG": "C", "STORAGED_CAMERA_THRESHOLD": "0.2"}
    conf = cfg.load(parse([]), env=env)
    assert conf.port == 9400 and conf.camera_threshold == 0.2 and isinstance(conf.camera_threshold, float)


def test_the_process_environment_is_read_when_none_is_given(monkeypatch, tmp_path):
    monkeypatch.setattr(cfg, "DEFAULT_INI", tmp_path / "absent.ini")
    monkeypatch.setenv("STORAGED_PORT", "9500")
    assert cfg.load(parse([])).port == 9500


def test_an_empty_boolean_is_false():
    conf = cfg.load(parse([]), env={"STORAGED_ACCESS_LOG": " ", "STORAGED_TIER_VERIFY_TLS": ""})
    assert conf.access_log is False and conf.tier_verify_tls is False


@pytest.mark.parametrize("name, raw, accepted", [("max_upload_size", "lots", "512M"), ("temp_max_age", "soon", "90s"),
                                                  ("access_log", "maybe", "yes/no")])
def test_a_bad_value_is_named_with_the_forms_accepted(name, raw, accepted):
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(parse([]), env={f"STORAGED_{name.upper()}": raw})
    message = str(caught.value)
    assert name in message and repr(raw) in message and accepted in message, message


def test_sizes_and_ages_are_shown_in_binary_units_and_the_largest_fitting_unit():
    """The form logs, `storaged gc --dry-run`, fsck and the pages show them in."""
    assert [cfg.human_size(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**3 // 2, 2 * 1024**4,
                                        3 * 1024**5)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "1.5 GiB", "2.0 TiB", "3072.0 TiB"]
    assert [cfg.human_age(s) for s in (-5, 0, 59, 60, 90, 3599, 3600, 5400, 86400, 129600)] == \
        ["0s", "0s", "59s", "1.0m", "1.5m", "60.0m", "1.0h", "1.5h", "1.0d", "1.5d"]


def test_help_shows_a_boolean_once_with_its_values_and_its_no_form_and_a_percent_as_written():
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    helptext = " ".join(parser.format_help().split())
    assert "--access-log [true|false]" in helptext
    assert "(also --no-access-log)" in helptext
    assert helptext.count("--no-access-log") == 1, "the --no- form is listed as a flag of its own"
    assert "a percent of its size (`5%`)" in helptext  # min_free's help, through argparse's %-formatting
    assert "--config CONFIG" in helptext


def test_a_bad_boolean_flag_is_refused_naming_the_forms_accepted(capsys):
    with pytest.raises(SystemExit) as caught:
        parse(["--access-log", "maybe"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--access-log" in err and "'maybe'" in err and "yes/no" in err, err
    assert parse(["--access-log", "off"]).access_log is False  # a value, not the text "off" (which is true)


def test_settings_load_from_any_parser_s_namespace_and_the_config_flag_gives_a_path(tmp_path):
    """A command whose parser lacks some settings (or --config) gets them from ini, env and defaults."""
    assert cfg.load(argparse.Namespace(port=9600), env={}).port == 9600
    assert cfg.load(argparse.Namespace(), env={"STORAGED_PORT": "9700"}).port == 9700
    ini = tmp_path / "s.ini"
    ini.write_text("[storaged]\nport = 9800\n")
    assert isinstance(parse(["--config", str(ini)]).config, Path)
    assert parse([]).config is None and parse([]).max_upload_size is None  # unset flags hide nothing


def test_an_unknown_time_zone_is_named():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus_Mons'"):
        cfg.zone("Mars/Olympus_Mons")


# -- videostreams interval index ---------------------------------------------------------------

def test_an_overlap_query_without_a_start_bound_stops_at_its_end():
    index = TimeIndex.build([(1, 100, 200, None), (2, 1000, 2000, None), (3, 1001, 1500, None),
                             (4, 999, 5000, None), (5, 5000, None, None)])
    assert index.query(None, 1000) == [(100, 1), (999, 4), (1000, 2)], "an entry starting after the end"
    assert index.query(None, 999) == [(100, 1), (999, 4)]
    assert index.query(150, 1000) == [(100, 1), (999, 4), (1000, 2)]
    assert index.query(1500, 1000) == []
    assert index.query(None, None) == [(100, 1), (999, 4), (1000, 2), (1001, 3), (5000, 5)]
    assert index.query(2001, None) == [(999, 4), (5000, 5)]


@pytest.mark.parametrize("qs", [None, 0, 500])
def test_the_index_honours_limit_in_every_run(qs):
    # Durations of different classes put entries in different runs, plus live ones.
    entries = []
    for i in range(1, 61):
        start = i * 100
        end = None if i % 10 == 0 else start + (1, 50, 5000, 500000)[i % 4]
        entries.append((i, start, end, None))
    index = TimeIndex.build(entries)
    everything = index.query(qs, 10_000)
    assert len(everything) > 20
    for limit in (1, 2, 7, 20):
        assert index.query(qs, 10_000, limit=limit) == everything[:limit]
    page, after, pages = [], None, 0
    while True:
        chunk = index.query(qs, 10_000, after=after, limit=7)
        if not chunk:
            break
        assert len(chunk) <= 7
        page += chunk
        after = chunk[-1]
        pages += 1
    assert page == everything and pages == -(-len(everything) // 7)


@pytest.mark.parametrize("durations", [(1,), (1, 5000), (1, 5000, None)])
def test_answers_come_in_start_order_whatever_mix_of_durations(durations):
    # Each kind of duration lands in its own run; the answer interleaves them by (start, id).
    entries = [(i, i * 10, None if durations[i % len(durations)] is None else i * 10 + durations[i % len(durations)],
                None) for i in range(1, 31)]
    index = TimeIndex.build(entries)
    assert index.query(None, None) == [(start, i) for i, start, _, _ in entries]
    assert index.query(100, 200) == [(start, i) for i, start, end, _ in entries
                                     if start <= 200 and (end is None or end >= 100)]
