"""Retention: the janitor under disk pressure on a small tmpfs, pins, 507 pokes, gc --dry-run, job inputs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path


from storaged.ops.api import JANITOR
from storaged.app import create_app
from storaged.config import Config
from storaged.families import providers
from storaged.ops.janitor import Janitor, parse_min_free
from storaged.store.layout import Layout
from tests.helpers import wait_until
from tests.ops_helpers import backdate, free_bytes, small_fs, write_image, write_segment  # noqa: F401 (small_fs is a fixture)

MiB = 1024 * 1024


def small_config(data: Path, **changes) -> Config:
    data.mkdir(exist_ok=True)
    base = dict(data_dir=data, access_log=False, janitor_interval=0.2, metrics_interval=3600.0,
                min_free="8M")
    base.update(changes)
    return Config(**base)


async def upload(client, body: bytes, name: str) -> str:
    resp = await client.post("/upload", params={"name": name}, data=io.BytesIO(body))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["file_id"]


def object_dir(data: Path, oid: str) -> Path:
    return data / oid[:2] / oid[2:]


def test_min_free_takes_percent_or_size():
    assert parse_min_free("5%", 1000) == 50
    assert parse_min_free("2G", 1) == 2 * 1024**3
    assert parse_min_free("0", 1000) == 0


async def test_janitor_keeps_free_space_while_recording_deleting_oldest_first(aiohttp_client, small_fs):
    data = small_fs / "data"
    client = await aiohttp_client(create_app(small_config(data)))
    janitor = client.app[JANITOR].janitor
    pinned = await upload(client, os.urandom(2 * MiB), "keep.bin")
    assert (await client.put(f"/upload/{pinned}/pin")).status == 200
    other = await upload(client, os.urandom(2 * MiB), "other.bin")
    base = time.time() - 7200
    written = []
    for i in range(40):  # 40 MiB of recording into a 32 MiB filesystem
        await wait_until(lambda: asyncio.sleep(0, free_bytes(small_fs) > 2 * MiB), timeout=60,
                         what="the janitor to make room")
        written.append(await asyncio.to_thread(write_segment, data, 1, 1, i, MiB, base + i * 10))
    await wait_until(lambda: asyncio.sleep(0, free_bytes(small_fs) >= 8 * MiB), timeout=60,
                     what="free space back above min_free")
    left = [p.exists() for p in written]
    assert not all(left), "nothing was deleted"
    # Oldest first: what is left is the newest, without holes.
    first_kept = left.index(True)
    assert all(left[first_kept:]) and not any(left[:first_kept])
    gone = [d for d in janitor.recent if d.kind == "recordings"]
    assert [d.rel for d in gone] == sorted(d.rel for d in gone)
    # Recordings go before uploads: both uploads are still there.
    assert object_dir(data, pinned).is_dir() and object_dir(data, other).is_dir()


async def test_under_pressure_opted_in_uploads_go_after_recordings_and_pinned_never(aiohttp_client, small_fs):
    data = small_fs / "data"
    client = await aiohttp_client(create_app(small_config(data, janitor_interval=3600.0,
                                                          space_kinds="ring,uploads")))
    janitor = client.app[JANITOR]
    await wait_until(lambda: asyncio.sleep(0, janitor.janitor.passes >= 1), what="the start-up pass")
    pinned = await upload(client, os.urandom(3 * MiB), "keep.bin")
    assert (await client.put(f"/upload/{pinned}/pin")).status == 200
    other = await upload(client, os.urandom(3 * MiB), "other.bin")
    for p in (object_dir(data, pinned) / "meta.json", object_dir(data, other) / "meta.json"):
        backdate(p, 86400)  # older than the recording: age alone would take the uploads first
    segment = write_segment(data, 1, 1, 0, MiB, time.time() - 3600)
    image = write_image(data, 1, time.time() - 3000)
    # Someone else's file eats the disk until even all deletable data cannot restore min_free.
    filler = data / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (free_bytes(small_fs) - 4 * MiB - 256 * 1024))
    janitor.poke()
    await wait_until(lambda: asyncio.sleep(0, not object_dir(data, other).exists()), timeout=60,
                     what="the unpinned upload to be deleted")
    assert not segment.exists() and not image.exists()
    kinds = [d.kind for d in janitor.janitor.recent]
    assert kinds.index("uploads") > kinds.index("recordings")
    assert kinds.index("uploads") > kinds.index("motion_images")
    assert object_dir(data, pinned).is_dir()
    resp = await client.get(f"/upload/{pinned}")
    assert (await resp.json())["pinned"] is True


async def test_upload_meeting_a_full_disk_gets_507_leaves_nothing_and_pokes_the_janitor(aiohttp_client, small_fs):
    data = small_fs / "data"
    client = await aiohttp_client(create_app(small_config(data, janitor_interval=0.0, min_free="6M")))
    task = client.app[JANITOR]
    await wait_until(lambda: asyncio.sleep(0, task.janitor.passes >= 1), what="the start-up pass")
    passes = task.janitor.passes
    segments = []
    i = 0
    while free_bytes(small_fs) > 2 * MiB:
        segments.append(write_segment(data, 1, 1, i, MiB, time.time() - 7200 + i))
        i += 1
    body = os.urandom(4 * MiB)
    resp = await client.post("/upload", params={"name": "big.bin"}, data=io.BytesIO(body))
    assert resp.status == 507, await resp.text()
    assert "insufficient storage" in (await resp.json())["error_message"]
    oid = hashlib.sha256(body).hexdigest()
    assert not object_dir(data, oid).exists()
    assert os.listdir(data / "tmp") == []
    assert task.pokes >= 1
    await wait_until(lambda: asyncio.sleep(0, task.janitor.passes > passes and free_bytes(small_fs) >= 6 * MiB),
                     timeout=60, what="a poked pass that frees space")
    assert not segments[0].exists()
    resp = await client.post("/upload", params={"name": "big.bin"}, data=io.BytesIO(body))
    assert resp.status == 200


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", *args], capture_output=True, text=True, timeout=120)


def test_gc_dry_run_deletes_nothing_and_prints_what_it_would(tmp_path: Path):
    data = tmp_path / "data"
    old = [write_segment(data, 1, 1, i, 1000, time.time() - 7200 + i) for i in range(3)]
    fresh = write_segment(data, 1, 1, 3, 1000, time.time() - 600)
    old_image = write_image(data, 2, time.time() - 7200)
    new_image = write_image(data, 2, time.time() - 60)
    common = ["--data-dir", str(data), "--retention-recordings", "1h", "--retention-motion-images", "1h",
              "--min-free", "0"]
    dry = run_cli("gc", "--dry-run", *common)
    assert dry.returncode == 0, dry.stderr
    for p in old + [old_image]:
        assert p.exists()
        assert f"would delete {'recordings' if p.suffix == '.ts' else 'motion_images'} " \
               f"{p.relative_to(data)}" in dry.stdout
    assert str(fresh.relative_to(data)) not in dry.stdout
    assert "4 item(s), would free" in dry.stdout
    real = run_cli("gc", *common)
    assert real.returncode == 0, real.stderr
    assert not any(p.exists() for p in old + [old_image])
    assert fresh.exists() and new_image.exists()
    assert f"deleted recordings {old[0].relative_to(data)}" in real.stdout


def test_janitor_never_deletes_the_input_of_a_queued_job_or_a_pinned_object(tmp_path: Path):
    data = tmp_path / "data"
    layout = Layout(data)
    layout.ensure()
    from storaged.files.pins import pin_blocking
    from storaged.store.objects import ObjectStore

    store = ObjectStore(layout, max_size=1 << 30)
    ids = []
    for n in range(3):
        src = layout.tmp / f"src{n}"
        src.write_bytes(os.urandom(5000))
        ids.append(store.put_file_blocking(src, f"f{n}.bin")["file_id"])
        backdate(layout.object_dir(ids[-1]) / "meta.json", 86400)
    busy, pinned, free = ids
    pin_blocking(layout, pinned, True)
    # A session split queued on ``busy``: its config declares the object as its input.
    job = data / "sessions" / "1.split" / "abc"
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps(
        {"kind": "split", "args": {"source": f"file:{layout.object_dir(busy)}/f0.bin"},
         "inputs": {"objects": [busy]}}))
    (data / "jobs" / "queue").mkdir(parents=True)
    (data / "jobs" / "queue" / "00000000000000000001-aaaa.json").write_text(
        json.dumps({"job_dir": "sessions/1.split/abc"}))
    config = Config(data_dir=data, retention_uploads=3600.0, min_free="0")
    report = Janitor(layout, config, providers(layout, config)).run_blocking()
    assert [d.rel for d in report.deletions] == [os.path.relpath(layout.object_dir(free), data)]
    assert layout.object_dir(busy).is_dir() and layout.object_dir(pinned).is_dir()
    assert not layout.object_dir(free).exists()


async def test_pin_routes(client, data_dir):
    oid = await upload(client, b"pin me", "p.txt")
    assert (await (await client.get(f"/upload/{oid}")).json())["pinned"] is False
    resp = await client.put(f"/upload/{oid}/pin")
    assert resp.status == 200 and await resp.json() == {"file_id": oid, "pinned": True}
    assert (object_dir(data_dir, oid) / "pinned").is_file()
    assert (await (await client.get(f"/upload/{oid}")).json())["pinned"] is True
    resp = await client.delete(f"/upload/{oid}/pin")
    assert resp.status == 200 and (await resp.json())["pinned"] is False
    assert (await (await client.get(f"/upload/{oid}")).json())["pinned"] is False
    assert (await client.put(f"/upload/{'0' * 64}/pin")).status == 404
    assert (await client.put("/upload/nothex/pin")).status == 400
