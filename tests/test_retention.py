"""Retention asks the families' providers: references protect, split jobs expire, space takes only ring data."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator


from storaged.app import create_app
from storaged.config import Config
from storaged.families import providers
from storaged.ops.api import JANITOR, METRICS
from storaged.ops.fsck import Fsck
from storaged.ops.janitor import Janitor
from storaged.ops.metrics import Metrics, walk_usage
from storaged.provider import RING, FsckContext, Item, Kind, Provider, Sample, Scan
from storaged.store.atomic import unlink_quiet
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore
from storaged.store.tree import files
from tests.helpers import wait_until
from tests.ops_helpers import backdate, free_bytes, small_fs, write_image, write_segment  # noqa: F401 (small_fs is a fixture)

MiB = 1024 * 1024
DAY = 86400


def store_bytes(layout: Layout, body: bytes, name: str) -> str:
    src = layout.tmp / f"src-{name}"
    src.write_bytes(body)
    return ObjectStore(layout, max_size=1 << 30).put_file_blocking(src, name)["file_id"]


def age_object(layout: Layout, oid: str, seconds: float) -> None:
    backdate(layout.object_dir(oid) / "meta.json", seconds)


# -- a toy family: ops handles it without a line changed in ops/ ----------------------------

class ToyProvider(Provider):
    """Files ``<data>/toys/<name>.toy``; a toy may name an object it needs in ``<name>.ref``."""

    name = "toys"
    top_dirs = ("toys",)

    def __init__(self, layout: Layout) -> None:
        self.root = layout.root / "toys"
        self.kinds = (Kind("toys", "retention_recordings", 0, self.items, self.delete, RING, "toy files"),)
        self.live_calls = 0

    def items(self, scan: Scan) -> Iterator[Item]:
        for e in files(self.root):
            if e.name.endswith(".toy"):
                st = e.stat()
                yield Item("toys", Path(e.path), scan.rel(Path(e.path)), st.st_mtime, st.st_size)

    def delete(self, scan: Scan, item: Item) -> bool:
        unlink_quiet(item.path)
        return True

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        for e in files(self.root):
            if e.name.endswith(".ref"):
                yield Path(e.path).read_text().strip(), f"toys/{e.name}"

    def job_roots(self) -> Iterable[Path]:
        return (self.root / "jobs",)

    def fsck(self, check: FsckContext) -> None:
        for e in files(self.root):
            if e.name.endswith(".broken"):
                check.problem("broken toy", Path(e.path), "toys must not be broken",
                              lambda path=Path(e.path): (path.unlink(), "thrown away")[1])

    def live(self) -> Iterable[Sample]:
        self.live_calls += 1
        yield Sample("storaged_toys_playing", "Toys being played with.", 3)

    def usage(self, scan: Scan) -> Iterable[Sample]:
        yield Sample("storaged_toys_counted", "Toys counted by the walk.", sum(1 for _ in self.items(scan)))


def test_a_toy_family_is_expired_referenced_checked_and_measured_without_changing_ops(tmp_path: Path):
    data = tmp_path / "data"
    layout = Layout(data)
    layout.ensure()
    config = Config(data_dir=data, retention_recordings=3600.0, retention_uploads=3600.0, min_free="0")
    toy = ToyProvider(layout)
    (data / "toys" / "jobs" / "j1").mkdir(parents=True)
    (data / "toys" / "jobs" / "j1" / "config.json").write_text(json.dumps({"kind": "toy", "args": {}}))
    (data / "toys" / "jobs" / "j1" / "results.json").write_text(json.dumps({"status": "done"}))
    old, new = data / "toys" / "old.toy", data / "toys" / "new.toy"
    old.write_bytes(b"o" * 100)
    new.write_bytes(b"n" * 100)
    backdate(old, 2 * 3600)
    kept = store_bytes(layout, b"needed by a toy", "kept.bin")
    gone = store_bytes(layout, b"needed by nobody", "gone.bin")
    for oid in (kept, gone):
        age_object(layout, oid, DAY)
    (data / "toys" / "a.ref").write_text(kept)
    all_providers = [*providers(layout, config), toy]

    report = Janitor(layout, config, all_providers).run_blocking()
    deleted = {d.rel for d in report.deletions}
    assert deleted == {"toys/old.toy", os.path.relpath(layout.object_dir(gone), data)}
    assert not old.exists() and new.exists()
    assert layout.object_dir(kept).is_dir()  # the toy's reference protected it

    usage = walk_usage(layout, config, all_providers)
    assert usage.kinds["toys"] == (100, 1)
    assert usage.jobs["done"] == 1  # the toy's job root was counted
    metrics = Metrics(providers=all_providers)
    metrics.usage = usage
    text = metrics.render().decode()
    assert "storaged_toys_playing 3.0" in text and "storaged_toys_counted 1.0" in text

    (data / "toys" / "x.broken").write_text("!")
    out = io.StringIO()
    assert Fsck(layout, config, all_providers, out=out, err=io.StringIO()).run() == 1
    assert "broken toy toys/x.broken: toys must not be broken" in out.getvalue()
    out = io.StringIO()
    assert Fsck(layout, config, all_providers, repair=True, out=out, err=io.StringIO()).run() == 1
    assert "-> thrown away" in out.getvalue()
    assert Fsck(layout, config, all_providers, out=io.StringIO(), err=io.StringIO()).run() == 0
    # Without the toy provider its directory is a stray: fsck only accepts what a family claims.
    out = io.StringIO()
    assert Fsck(layout, config, providers(layout, config), out=out, err=io.StringIO()).run() == 1
    assert "stray toys:" in out.getvalue()


def test_ops_holds_no_family_knowledge():
    ops = Path(__file__).resolve().parent.parent / "storaged" / "ops"
    families = ("files", "analyses", "sessions", "recording", "videostreams", "camera")
    for path in ops.glob("*.py"):
        text = path.read_text()
        for family in families:
            assert f"storaged.{family}" not in text, f"{path.name} imports the {family} family"
        for pattern in ("segments/", "clips/", "captures", ".jpg", '.split"', "analysis/", "processes/", r"r\d{6}"):
            assert pattern not in text, f"{path.name} knows a family's file names ({pattern})"


# -- references ---------------------------------------------------------------------------

async def test_a_referenced_upload_survives_a_pass_that_deletes_an_unreferenced_one_of_the_same_age(
        aiohttp_client, data_dir):
    config = Config(data_dir=data_dir, access_log=False, janitor_interval=0.0, metrics_interval=3600.0,
                    retention_uploads=3600.0, min_free="0")
    client = await aiohttp_client(create_app(config))
    layout = Layout(data_dir)
    ids = {}
    for name in ("session.mp4", "race.mp4", "stream.mp4", "nobody.mp4"):
        resp = await client.post("/upload", params={"name": name}, data=io.BytesIO(name.encode() * 1000))
        assert resp.status == 200
        ids[name] = (await resp.json())["file_id"]
    resp = await client.post("/sessions", json={"video_url": f"/download/{ids['session.mp4']}/session.mp4"})
    sid = (await resp.json())["id"]
    resp = await client.post(f"/sessions/{sid}/races", json={"start_time": 1, "duration": 2,
                                                             "video_url": f"/download/{ids['race.mp4']}"})
    assert resp.status == 201
    resp = await client.post("/api/v1/videostreams", json={
        "stream_url": f"http://box.local/download/{ids['stream.mp4']}/stream.mp4",
        "startTime": "2026-01-01T00:00:00Z"})
    assert resp.status in (200, 201), await resp.text()
    for oid in ids.values():
        age_object(layout, oid, DAY)  # all four the same age, well past retention_uploads

    report = await asyncio.to_thread(client.app[JANITOR].janitor.run_blocking)
    assert [d.rel for d in report.deletions] == [os.path.relpath(layout.object_dir(ids["nobody.mp4"]), data_dir)]
    for name in ("session.mp4", "race.mp4", "stream.mp4"):
        assert (await client.get(f"/upload/{ids[name]}")).status == 200, name
    assert (await client.get(f"/upload/{ids['nobody.mp4']}")).status == 404

    # The reference protects only while it exists: drop the session's video and it expires.
    resp = await client.put(f"/sessions/{sid}", json={"video_url": None})
    assert resp.status == 200, await resp.text()
    report = await asyncio.to_thread(client.app[JANITOR].janitor.run_blocking)
    assert [d.rel for d in report.deletions] == [os.path.relpath(layout.object_dir(ids["session.mp4"]), data_dir)]


async def test_an_expired_session_split_job_is_deleted_and_its_clips_stay(aiohttp_client, data_dir, video_10s):
    config = Config(data_dir=data_dir, access_log=False, janitor_interval=0.0, metrics_interval=3600.0,
                    retention_exports=3600.0, retention_uploads=3600.0, min_free="0")
    client = await aiohttp_client(create_app(config))
    with open(video_10s, "rb") as fh:
        resp = await client.post("/upload", params={"name": "s.mp4"}, data=fh)
    video = (await resp.json())["file_id"]
    sid = (await (await client.post("/sessions", json={"video_url": f"/download/{video}"})).json())["id"]
    resp = await client.post(f"/sessions/{sid}/races", json={"start_time": 1.0, "duration": 3.0})
    race = (await resp.json())["id"]
    resp = await client.post(f"/sessions/{sid}/split_races")
    assert resp.status in (200, 202), await resp.text()

    async def split_done():
        body = await (await client.get(f"/sessions/{sid}/split_races")).json()
        return body if body["status"] == "done" else None
    await wait_until(split_done, timeout=90, what="the split")

    async def race_has_clip():
        body = await (await client.get(f"/races/{race}")).json()
        return body.get("video_url")
    clip_url = await wait_until(race_has_clip, what="the race's clip link")
    job_dirs = [d for d in (data_dir / "sessions" / f"{sid}.split").iterdir() if d.is_dir()]
    assert len(job_dirs) == 1
    config_json = json.loads((job_dirs[0] / "config.json").read_text())
    assert config_json["inputs"] == {"objects": [video]}  # the split declared what it reads
    backdate(job_dirs[0] / "results.json", 2 * 3600)
    layout = Layout(data_dir)
    clip = clip_url.split("/")[2]
    for oid in (video, clip):
        age_object(layout, oid, DAY)

    report = await asyncio.to_thread(client.app[JANITOR].janitor.run_blocking)
    assert [(d.kind, d.rel) for d in report.deletions] == [("splits", os.path.relpath(job_dirs[0], data_dir))]
    assert not job_dirs[0].exists()
    # The session's video and the race's clip are referenced by their records: both stay.
    assert layout.object_dir(video).is_dir() and layout.object_dir(clip).is_dir()
    assert (await client.get(clip_url)).status == 200


# -- space pressure -----------------------------------------------------------------------

async def test_space_pressure_by_default_takes_only_old_ring_data_and_writes_then_get_507(
        aiohttp_client, small_fs, caplog):
    data = small_fs / "data"
    data.mkdir()
    config = Config(data_dir=data, access_log=False, janitor_interval=0.0, metrics_interval=3600.0,
                    min_free="8M")
    client = await aiohttp_client(create_app(config))
    task = client.app[JANITOR]
    await wait_until(lambda: asyncio.sleep(0, task.janitor.passes >= 1), what="the start-up pass")
    uploads = []
    for n in range(3):
        resp = await client.post("/upload", params={"name": f"u{n}.bin"}, data=io.BytesIO(os.urandom(3 * MiB)))
        assert resp.status == 200
        uploads.append((await resp.json())["file_id"])
    layout = Layout(data)
    for oid in uploads:
        age_object(layout, oid, DAY)  # older than everything else: age order alone would take them first
    old_segment = write_segment(data, 1, 1, 0, MiB, time.time() - 3600)
    old_image = write_image(data, 1, time.time() - 3000)
    young_segment = write_segment(data, 1, 2, 0, MiB, time.time() - 120)   # inside the live window
    young_image = write_image(data, 1, time.time() - 5)
    with open(data / "filler.bin", "wb") as fh:   # someone else's file eats the disk
        fh.write(b"\0" * (free_bytes(small_fs) - 3 * MiB))

    with caplog.at_level(logging.WARNING, logger="storaged.janitor"):
        report = await task.run_once("test")
    assert {d.kind for d in report.deletions} == {"recordings", "motion_images"}
    assert not old_segment.exists() and not old_image.exists()
    assert young_segment.exists() and young_image.exists()
    assert all(layout.object_dir(oid).is_dir() for oid in uploads)
    assert report.short > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"deleted recordings {old_segment.relative_to(data)}" in w and "below min_free" in w
               for w in warnings), warnings
    assert any("nothing else may be deleted" in w for w in warnings), warnings

    text = await (await client.get("/metrics")).text()
    assert 'storaged_janitor_space_deleted_files_total{kind="recordings"} 1.0' in text
    assert 'storaged_janitor_space_deleted_files_total{kind="motion_images"} 1.0' in text
    assert 'storaged_janitor_space_deleted_files_total{kind="uploads"} 0.0' in text

    # Nothing deletable is left: a write that meets the full disk answers 507 and every upload stays.
    resp = await client.post("/upload", params={"name": "big.bin"}, data=io.BytesIO(os.urandom(6 * MiB)))
    assert resp.status == 507
    await wait_until(lambda: asyncio.sleep(0, task.pokes >= 1 and not task.running), what="the poked pass")
    for oid in uploads:
        assert (await client.get(f"/upload/{oid}")).status == 200


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", *args], capture_output=True, text=True, timeout=120)


def test_gc_dry_run_lists_space_deletions_and_space_kinds_opts_a_kind_in(small_fs):
    data = small_fs / "data"
    layout = Layout(data)
    layout.ensure()
    oid = store_bytes(layout, os.urandom(2 * MiB), "u.bin")
    age_object(layout, oid, DAY)
    segment = write_segment(data, 1, 1, 0, MiB, time.time() - 3600)
    with open(data / "filler.bin", "wb") as fh:
        fh.write(b"\0" * (free_bytes(small_fs) - 2 * MiB))
    common = ["--data-dir", str(data), "--min-free", "12M"]
    dry = run_cli("gc", "--dry-run", *common)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete recordings {segment.relative_to(data)}" in dry.stdout
    assert "below min_free" in dry.stdout
    assert "uploads" not in dry.stdout
    opted = run_cli("gc", "--dry-run", "--space-kinds", "ring,uploads", *common)
    assert f"would delete uploads {os.path.relpath(layout.object_dir(oid), data)}" in opted.stdout
    bad = run_cli("gc", "--dry-run", "--space-kinds", "ring,nonsense", *common)
    assert bad.returncode == 2 and "space_kinds: unknown kind(s) nonsense" in bad.stdout
    assert segment.exists() and layout.object_dir(oid).is_dir()
