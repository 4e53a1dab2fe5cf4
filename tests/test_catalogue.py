"""Record catalogues: memory kept in step with the tree, paging, group-committed creates."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import random
import sys

import pytest

from storaged.store import atomic
from storaged.store.catalogue import Catalogue
from storaged.store.layout import Layout
from storaged.store.records import RecordStore
from storaged.sessions.service import event_span
from tests.helpers import gate_dir_fsyncs


def _events(layout: Layout) -> RecordStore:
    return RecordStore(layout, "events", catalogue=Catalogue(
        "events", ("session_id", "race_id", "type"), span=event_span, span_group="session_id"))


def _tree(store: RecordStore) -> dict[int, dict]:
    return {r["id"]: r for r in store.all_blocking()}


async def test_memory_follows_every_write_and_a_rebuild_equals_it(data_dir):
    """Random creates, updates and deletes: the memory equals the files, and a fresh load equals both."""
    layout = Layout(data_dir)
    store = _events(layout)
    await store.load()
    rng = random.Random(7)
    live: list[int] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.6 or not live:
            rec = await store.create({"session_id": rng.randint(1, 4), "race_id": rng.choice([None, 1, 2]),
                                      "type": rng.choice("abc"), "time": rng.uniform(0, 100),
                                      "duration": rng.choice([None, rng.uniform(0, 10)])})
            live.append(rec["id"])
        elif op < 0.8:
            rid = rng.choice(live)
            await store.update(rid, lambda r: {**r, "time": rng.uniform(0, 100), "type": rng.choice("abc")})
        else:
            rid = live.pop(rng.randrange(len(live)))
            await store.delete(rid)
    tree = _tree(store)
    assert {i: store.catalogue.get(i) for i in store.catalogue.rows} == tree
    fresh = _events(layout)
    await fresh.load()
    assert fresh.catalogue.rows == store.catalogue.rows
    # Every facet and span answer equals a filter over the tree.
    for session in range(1, 5):
        for t_from, t_to in [(0, 100), (10, 20), (50, 50), (None, 30), (70, None)]:
            want = sorted(i for i, r in tree.items() if r["session_id"] == session
                          and (t_to is None or r["time"] <= t_to)
                          and (t_from is None or r["time"] + (r["duration"] or 0) >= t_from))
            span = (None if t_from is None else t_from * 10**6, None if t_to is None else t_to * 10**6)
            assert fresh.catalogue.select({"session_id": session}, span=span) == want
    for kind in "abc":
        assert store.catalogue.select({"type": kind, "race_id": None}) == sorted(
            i for i, r in tree.items() if r["type"] == kind and r["race_id"] is None)


async def test_ids_continue_after_a_restart_and_never_reuse_the_hint(data_dir):
    layout = Layout(data_dir)
    store = _events(layout)
    await store.load()
    ids = [(await store.create({"session_id": 1, "type": "x", "time": 1}))["id"] for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    await store.delete(5)
    again = _events(layout)
    await again.load()
    assert (await again.create({"session_id": 1, "type": "x", "time": 1}))["id"] == 6


async def test_an_unreadable_record_is_left_out_and_named(data_dir):
    layout = Layout(data_dir)
    store = _events(layout)
    await store.load()
    await store.create({"session_id": 1, "type": "x", "time": 1})
    (store.dir / "2.json").write_text('{"id": 2, "sess')
    fresh = _events(layout)
    await fresh.load()
    assert list(fresh.catalogue.rows) == [1]
    assert 2 in fresh.catalogue.damaged
    assert (await fresh.create({"session_id": 1, "type": "x", "time": 1}))["id"] == 3


async def test_concurrent_creates_share_directory_fsyncs_and_each_is_durable(data_dir, monkeypatch):
    """64 creates at once: every record is on disk when answered, with far fewer directory fsyncs than creates."""
    layout = Layout(data_dir)
    store = _events(layout)
    await store.load()
    dir_syncs = []
    real = atomic.fsync_dir

    def counting(path):
        dir_syncs.append(path)
        real(path)

    monkeypatch.setattr(atomic, "fsync_dir", counting)
    answered = []

    async def one(i):
        rec = await store.create({"session_id": 1, "type": "x", "time": i})
        # Durable before answered: the file is under its final name, whole.
        assert json.loads((store.dir / f"{rec['id']}.json").read_text()) == rec
        answered.append(rec["id"])

    await asyncio.gather(*(one(i) for i in range(64)))
    assert sorted(answered) == list(range(1, 65))
    assert 1 <= len([p for p in dir_syncs if p == store.dir]) < 64


async def test_concurrent_updates_share_directory_fsyncs_and_each_is_durable(data_dir, monkeypatch):
    """32 updates at once (a split's results applied to its races): each record is replaced on disk when
    answered, with fewer directory fsyncs than updates."""
    layout = Layout(data_dir)
    store = _events(layout)
    await store.load()
    records = [await store.create({"session_id": 1, "type": "x", "time": i}) for i in range(32)]
    dir_syncs = []
    real = atomic.fsync_dir

    def counting(path):
        dir_syncs.append(path)
        real(path)

    monkeypatch.setattr(atomic, "fsync_dir", counting)

    async def one(rec):
        new = await store.update(rec["id"], lambda r: {**r, "time": r["time"] + 1000})
        assert json.loads((store.dir / f"{rec['id']}.json").read_text()) == new
        assert store.catalogue.get(rec["id"]) == new

    await asyncio.gather(*(one(rec) for rec in records))
    assert sorted(r["time"] for r in store.all_blocking()) == [1000 + i for i in range(32)]
    assert 1 <= len([p for p in dir_syncs if p == store.dir]) < 32


async def test_dirsync_waits_for_an_fsync_that_began_after_its_rename(tmp_path, monkeypatch):
    """A writer arriving while an fsync runs is not answered by that fsync."""
    started, gate = gate_dir_fsyncs(monkeypatch)
    sync = atomic.DirSync(tmp_path)
    first = asyncio.create_task(sync.sync())
    while not started:
        await asyncio.sleep(0.001)
    second = asyncio.create_task(sync.sync())
    await asyncio.sleep(0.01)
    assert not second.done()
    gate.set()
    await asyncio.gather(first, second)
    assert len(started) == 2


async def test_lists_page_with_limit_and_cursor(client):
    for _ in range(5):
        assert (await client.post("/sessions", json={})).status == 201
    resp = await client.get("/sessions?limit=2")
    assert [s["id"] for s in await resp.json()] == [1, 2]
    assert resp.headers["X-Next-Cursor"] == "2"
    assert 'rel="next"' in resp.headers["Link"]
    resp = await client.get("/sessions?limit=2&cursor=4")
    assert [s["id"] for s in await resp.json()] == [5]
    assert "X-Next-Cursor" not in resp.headers
    assert (await client.get("/sessions?limit=0")).status == 400
    for t in range(6):
        await client.post("/sessions/1/events", json={"type": "lap", "time": t})
    resp = await client.get("/events?session=1&from=1&to=4&limit=2")
    assert [e["time"] for e in await resp.json()] == [1, 2]
    nxt = resp.headers["Link"].split(";")[0].strip("<>")
    assert [e["time"] for e in await (await client.get(nxt)).json()] == [3, 4]


async def test_events_created_at_once_in_one_session_all_land(client):
    assert (await client.post("/sessions", json={})).status == 201
    resps = await asyncio.gather(*(client.post("/sessions/1/events", json={"type": "t", "time": i})
                                   for i in range(40)))
    assert [r.status for r in resps] == [201] * 40
    events = await (await client.get("/sessions/1/events")).json()
    assert sorted(e["time"] for e in events) == list(range(40))
    assert len({e["id"] for e in events}) == 40


async def test_a_session_deleted_while_events_are_added_leaves_no_orphan(client):
    assert (await client.post("/sessions", json={})).status == 201
    creates = [client.post("/sessions/1/events", json={"type": "t", "time": i}) for i in range(30)]
    results = await asyncio.gather(*creates[:15], client.delete("/sessions/1"), *creates[15:])
    assert results[15].status == 200
    assert {r.status for r in results[:15] + results[16:]} <= {201, 404}
    assert await (await client.get("/events")).json() == []


# -- start-up snapshots -------------------------------------------------------------------

async def _restart(layout: Layout, caplog) -> RecordStore:
    caplog.clear()
    store = _events(layout)
    with caplog.at_level("INFO", logger="storaged.records"):
        await store.load()
    return store


async def _fill(layout: Layout, n: int) -> RecordStore:
    store = _events(layout)
    await store.load()
    for i in range(n):
        await store.create({"session_id": 1 + i % 3, "type": "lap", "time": i, "duration": None})
    await store.close()
    return store


async def test_a_clean_stop_leaves_a_snapshot_the_next_start_uses_without_reading_files(data_dir, caplog):
    layout = Layout(data_dir)
    first = await _fill(layout, 50)
    again = await _restart(layout, caplog)
    assert "directory unchanged; 0 files read" in caplog.text
    assert again.catalogue.rows == first.catalogue.rows
    assert again.catalogue.select({"session_id": 2}, span=(10 * 10**6, 20 * 10**6)) == \
        first.catalogue.select({"session_id": 2}, span=(10 * 10**6, 20 * 10**6))


async def test_records_written_deleted_or_replaced_while_stopped_are_seen(data_dir, caplog):
    layout = Layout(data_dir)
    await _fill(layout, 20)
    d = data_dir / "events"
    os.unlink(d / "3.json")
    rec = json.loads((d / "5.json").read_text())
    atomic.write_json(d / "5.json", {**rec, "type": "edited"})  # as an editor saves: a new file renamed in
    atomic.write_json(d / "99.json", {**rec, "id": 99})
    again = await _restart(layout, caplog)
    assert "changed files read again" in caplog.text
    assert 3 not in again.catalogue and again.catalogue.get(99)["id"] == 99
    assert again.catalogue.select({"type": "edited"}) == [5]
    assert {i: again.catalogue.get(i) for i in again.catalogue.rows} == _tree(again)


async def test_a_file_changed_in_place_behind_a_stopped_daemon_is_read_again(data_dir, caplog):
    layout = Layout(data_dir)
    await _fill(layout, 20)
    path = data_dir / "events" / "7.json"
    rec = json.loads(path.read_text())
    with open(path, "w") as fh:  # in place: the directory does not change
        fh.write(json.dumps({**rec, "type": "in-place"}))
    again = await _restart(layout, caplog)
    assert "directory unchanged" in caplog.text
    assert await again.check_snapshot() == 1
    assert again.catalogue.select({"type": "in-place"}) == [7]


async def test_a_snapshots_json_is_mapped_and_outlives_the_file_being_replaced_or_removed(data_dir, caplog):
    """The records' bytes are mapped from the snapshot, not read into the process (it starts at a page
    boundary); the clean stop that writes the next snapshot from them, and a removed cache, leave the
    running memory whole."""
    from storaged.store import snapshot
    from storaged.store.records import SNAPSHOT_VERSION
    layout = Layout(data_dir)
    await _fill(layout, 40)
    path = snapshot.path_for(data_dir, "events")
    saved = snapshot.read(path, data_dir / "events", SNAPSHOT_VERSION)
    assert isinstance(saved.columns["blob"], mmap.mmap) and len(saved.columns["blob"]) > 40 * 20
    assert json.loads(saved.columns["blob"][:saved.columns["offsets"][1]])["id"] == 1
    again = await _restart(layout, caplog)
    assert "directory unchanged" in caplog.text
    await again.update(7, lambda r: {**r, "type": "moved"})
    await again.delete(9)
    await again.create({"session_id": 2, "type": "late", "time": 99, "duration": None})
    await again.close()  # the next snapshot, partly from the mapped bytes, replaces the file by a rename
    assert {i: json.loads(again.catalogue.raw(i)) for i in again.catalogue.ids()} == _tree(again)
    third = await _restart(layout, caplog)
    assert "directory unchanged" in caplog.text
    assert third.catalogue.rows == again.catalogue.rows
    snapshot.drop(path)
    assert {i: json.loads(third.catalogue.raw(i)) for i in third.catalogue.ids()} == _tree(third)
    assert third.catalogue.select({"type": "moved"}) == [7] and 9 not in third.catalogue
    await third.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])  # nothing maps this one: the start that reads it is still to come
    assert snapshot.read(path, data_dir / "events", SNAPSHOT_VERSION) is None


async def test_an_unreadable_snapshot_is_ignored(data_dir, caplog):
    layout = Layout(data_dir)
    first = await _fill(layout, 10)
    from storaged.store import snapshot
    snapshot.path_for(data_dir, "events").write_bytes(b"\x00garbage")
    again = await _restart(layout, caplog)
    assert "read every file" in caplog.text
    assert again.catalogue.rows == first.catalogue.rows


async def test_videostreams_start_from_a_snapshot_and_see_in_place_changes(data_dir, caplog):
    from storaged.videostreams.service import VideostreamCatalogue
    layout = Layout(data_dir)
    first = VideostreamCatalogue(layout)
    made = [await first.create({"stream_url": f"rtsp://cam/{i}", "startTime": f"2024-01-01T00:{i:02d}:00Z",
                                "endTime": f"2024-01-01T00:{i:02d}:30Z", "capturesource": 1 + i % 2})
            for i in range(12)]
    await first.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="storaged"):  # the record store logs how it loaded
        again = VideostreamCatalogue(layout)
        await again.load()
    assert "directory unchanged; 0 files read" in caplog.text
    assert [await again.get(m["id"]) for m in made] == made
    path = first.store.path(made[3]["id"])
    edited = {**made[3], "stream_url": "rtsp://cam/edited"}
    with open(path, "w") as fh:  # in place, behind the stopped daemon's back
        fh.write(json.dumps(edited))
    third = VideostreamCatalogue(layout)
    await third.load()
    assert await third.check_snapshot() == 1
    assert await third.get(made[3]["id"]) == edited


async def test_fsck_finds_a_snapshot_that_files_changed_in_place_behind(data_dir):
    import io

    from storaged.config import Config
    from storaged.families import providers
    from storaged.ops import fsck
    from storaged.store import snapshot
    layout = Layout(data_dir)

    def Fsck(layout, config, _none, **kw):
        return fsck.Fsck(layout, config, providers(layout, config), **kw)

    sessions = RecordStore(layout, "sessions")
    for _ in range(3):
        await sessions.create({"video_url": None})

    await _fill(layout, 5)
    out = io.StringIO()
    assert Fsck(layout, Config(data_dir=data_dir), [], out=out).run() == 0, out.getvalue()
    path = data_dir / "events" / "2.json"
    rec = json.loads(path.read_text())
    with open(path, "w") as fh:
        fh.write(json.dumps({**rec, "type": "edited in place"}))
    out = io.StringIO()
    assert Fsck(layout, Config(data_dir=data_dir), [], out=out).run() == 1
    assert "stale snapshot" in out.getvalue() and "2.json" in out.getvalue()
    out = io.StringIO()
    Fsck(layout, Config(data_dir=data_dir), [], repair=True, out=out).run()
    assert not snapshot.path_for(data_dir, "events").exists()
    assert Fsck(layout, Config(data_dir=data_dir), [], out=io.StringIO()).run() == 0


async def test_writes_layered_over_a_snapshot_table_answer_like_the_tree(data_dir, caplog):
    """Rows loaded from a snapshot (the frozen columns) plus random writes since: every answer equals the tree."""
    layout = Layout(data_dir)
    rng = random.Random(11)
    first = _events(layout)
    await first.load()
    for _ in range(200):
        await first.create({"session_id": rng.randint(1, 4), "race_id": rng.choice([None, 1, 2]),
                            "type": rng.choice("abc"), "time": rng.uniform(0, 100),
                            "duration": rng.choice([None, rng.uniform(0, 10)])})
    await first.close()
    store = await _restart(layout, caplog)
    assert "directory unchanged; 0 files read" in caplog.text
    live = sorted(store.catalogue.ids())
    for _ in range(150):
        op = rng.random()
        if op < 0.4:
            rec = await store.create({"session_id": rng.randint(1, 4), "race_id": rng.choice([None, 1, 2]),
                                      "type": rng.choice("abc"), "time": rng.uniform(0, 100), "duration": None})
            live.append(rec["id"])
        elif op < 0.7:
            await store.update(rng.choice(live), lambda r: {**r, "time": rng.uniform(0, 100),
                                                            "session_id": rng.randint(1, 4)})
        else:
            await store.delete(live.pop(rng.randrange(len(live))))
    tree = _tree(store)
    assert store.catalogue.rows == {i: store.catalogue.raw(i) for i in sorted(tree)}
    assert {i: store.catalogue.get(i) for i in store.catalogue.ids()} == tree
    assert len(store.catalogue) == len(tree) and store.catalogue.max_id() == max(tree)
    for session in range(1, 5):
        assert store.catalogue.count("session_id", session) == sum(r["session_id"] == session for r in tree.values())
        for t_from, t_to in [(0, 100), (10, 20), (None, 30), (70, None)]:
            want = sorted(i for i, r in tree.items() if r["session_id"] == session
                          and (t_to is None or r["time"] <= t_to)
                          and (t_from is None or r["time"] + (r["duration"] or 0) >= t_from))
            span = (None if t_from is None else t_from * 10**6, None if t_to is None else t_to * 10**6)
            assert store.catalogue.select({"session_id": session}, span=span) == want
            assert store.catalogue.select({"session_id": session, "type": "a"}, span=span) == [
                i for i in want if tree[i]["type"] == "a"]
    for kind in "abc":
        want = sorted(i for i, r in tree.items() if r["type"] == kind and r["race_id"] is None)
        assert store.catalogue.select({"type": kind, "race_id": None}) == want
        # pages resume after the last id and add up to the whole answer
        pages, after = [], None
        while True:
            page = store.catalogue.select({"type": kind, "race_id": None}, after=after, limit=7)
            pages += page
            if len(page) < 7:
                break
            after = page[-1]
        assert pages == want
    # The next clean stop folds the writes into one table; a start from it holds the same.
    await store.close()
    again = await _restart(layout, caplog)
    assert "directory unchanged; 0 files read" in caplog.text
    assert again.catalogue.rows == store.catalogue.rows


@pytest.mark.parametrize("where", ["child", "thread"])
async def test_verification_after_a_trusted_start_sees_files_added_removed_or_changed(data_dir, caplog,
                                                                                      monkeypatch, where):
    """Names created or removed behind a stopped daemon whose directory mtime was set back, and a file
    rewritten in place: the start trusts the snapshot, the verification finds all three and fixes the memory;
    in a child process (this process's own listing would fail), or in a thread when no child can start."""
    from storaged.store import snapshot

    def not_here(*_args):
        raise AssertionError("the directory was listed in this process")
    if where == "child":
        monkeypatch.setattr(snapshot, "differences", not_here)
    else:
        monkeypatch.setattr(sys, "executable", str(data_dir / "no-such-python"))
    layout = Layout(data_dir)
    await _fill(layout, 30)
    d = data_dir / "events"
    before = os.stat(d)
    rec = json.loads((d / "4.json").read_text())
    os.unlink(d / "3.json")
    (d / "77.json").write_text(json.dumps({**rec, "id": 77}))
    with open(d / "4.json", "w") as fh:
        fh.write(json.dumps({**rec, "type": "in-place"}))
    os.utime(d, ns=(before.st_atime_ns, before.st_mtime_ns))  # as a restore from a backup may leave it
    again = await _restart(layout, caplog)
    assert "directory unchanged" in caplog.text
    assert await again.check_snapshot() == 3
    assert 3 not in again.catalogue and again.catalogue.get(77)["id"] == 77
    assert again.catalogue.select({"type": "in-place"}) == [4]
    assert {i: again.catalogue.get(i) for i in again.catalogue.ids()} == _tree(again)


async def test_a_trusted_start_does_not_list_the_directory(data_dir, caplog, monkeypatch):
    """With a valid snapshot the first answer waits for no walk of the record directory (a million names):
    the listing happens in the verification afterwards."""
    layout = Layout(data_dir)
    first = await _fill(layout, 40)
    walked = []

    def no_walk(*args, **kwargs):
        walked.append(args)
        raise AssertionError("the record directory was listed before serving")

    with monkeypatch.context() as m:
        m.setattr(os, "listdir", no_walk)
        m.setattr(os, "scandir", no_walk)
        again = await _restart(layout, caplog)
    assert not walked and "directory unchanged; 0 files read" in caplog.text
    assert again.catalogue.rows == first.catalogue.rows
    assert await again.check_snapshot() == 0
