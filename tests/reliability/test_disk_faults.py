"""A real daemon on a real small filesystem that fills up, turns read-only, or is tampered with.

* *Disk full*: a 64 MiB tmpfs, uploads and record creates from several
  clients at once while a stream records a live source and a camera saves
  motion images from another, until the disk is full.  Every answer is 200/201 or 507 naming ENOSPC, nothing acknowledged
  is lost or torn, failed uploads leave no temp file, no camera image under
  its final name is torn, ``/healthz`` says 503; when space comes back (a
  file outside the data root is removed) writes succeed again, the camera
  saves again, and after a restart ``storaged fsck`` is clean.
* *Read-only remount* mid-run (``mount -o remount,ro``): write routes answer
  503 naming EROFS, reads go on, ``/healthz`` says 503 and why; read-write
  again, everything works and fsck is clean.  ``serve`` on a read-only root
  refuses to start in one line.
* *Tampering* behind a stopped daemon: missing bytes, a flipped byte, a
  half-written record, junk files.  The restarted daemon names the damage,
  re-uploads heal the objects, ``fsck --repair`` sets the record aside, and
  after another restart everything acknowledged is there.

The filesystems are real tmpfs mounts (the suite runs as root, in CI too); a
machine where mounting is impossible fails these tests, it never skips them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Daemon, json_of, wait_until
from tests.live_source import LiveSource, kill_processes_under

DAEMON_ARGS = ("--min-free", "0", "--janitor-interval", "0", "--metrics-interval", "1h",
               "--health-min-free", "4M", "--stream-segment-time", "2", "--stream-start-timeout", "20")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=check)


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mounted = run("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt), check=False)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a 64 MiB tmpfs at {mnt}: {mounted.stderr.strip()} "
                    "(this suite needs root: it fills, remounts and tampers with a real filesystem)")
    try:
        yield mnt
    finally:
        kill_processes_under(mnt)
        run("umount", "-l", str(mnt), check=False)


def daemon_on(data_dir: Path, log_dir: Path, *extra: str) -> Daemon:
    d = Daemon(data_dir, *DAEMON_ARGS, *extra)
    d.log_path = log_dir / f"daemon-{d.port}.log"  # the log must not live on the filesystem under test
    return d


def fsck(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", "fsck", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, object]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await json_of(resp)


async def download(http: aiohttp.ClientSession, url: str, oid: str) -> bytes:
    async with http.get(f"{url}/download/{oid}") as resp:
        assert resp.status == 200, (oid, resp.status)
        return await resp.read()


async def health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    return await call(http, "GET", f"{url}/healthz")


# -- disk full ---------------------------------------------------------------------------------

async def test_disk_full_loses_nothing_acknowledged_and_recovers(small_fs, tmp_path):
    data_dir = small_fs / "data"
    ballast = small_fs / "ballast"  # space taken by something else on the same filesystem
    ballast.write_bytes(os.urandom(12 << 20))
    source = LiveSource().start()
    camera_feed = LiveSource().start()
    d = daemon_on(data_dir, tmp_path, "--cameras", f"1={camera_feed.url}|fps=2|threshold=0.01",
                  "--camera-backoff-max", "2")
    rng = random.Random(15)
    acknowledged: dict[str, bytes] = {}
    sessions: dict[int, str] = {}
    refusals: list[dict] = []
    try:
        d.start(timeout=60)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            status, out = await call(http, "POST", f"{d.url}/streams/create", json={"url": source.url})
            assert status == 200, out
            sid = out["stream_id"]
            status, out = await call(http, "POST", f"{d.url}/streams/{sid}/start")
            assert status == 200, out

            async def uploads(worker: int) -> None:
                seen_full = 0
                n = 0
                while seen_full < 3:
                    n += 1
                    body = rng.randbytes(rng.randrange(256 << 10, 3 << 20))
                    status, out = await call(http, "POST", f"{d.url}/upload",
                                             params={"name": f"w{worker}-{n}.bin"}, data=io.BytesIO(body))
                    if status == 200:
                        assert out["file_id"] == hashlib.sha256(body).hexdigest()
                        acknowledged[out["file_id"]] = body
                    else:
                        assert status == 507, (status, out)
                        refusals.append(out)
                        seen_full += 1

            async def records() -> None:
                n = 0
                while len(refusals) < 12:
                    n += 1
                    status, out = await call(http, "POST", f"{d.url}/sessions", json={"video_url": f"/v{n}"})
                    if status == 201:
                        sessions[out["id"]] = f"/v{n}"
                    else:
                        assert status == 507, (status, out)
                        refusals.append(out)
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(uploads(w) for w in range(4)), records())
            assert len(acknowledged) >= 5, "the disk filled before anything was acknowledged"
            for out in refusals:
                assert out["cause"] == "ENOSPC" and "(ENOSPC)" in out["error_message"], out

            # Full: health says so, and why.
            status, out = await health(http, d.url)
            assert status == 503 and out["ok"] is False, out
            assert any("health_min_free" in p for p in out["problems"]), out
            # Nothing acknowledged lost, nothing torn; failed uploads left no temp file.
            for oid, body in acknowledged.items():
                assert await download(http, d.url, oid) == body
            for session_id, video_url in sessions.items():
                status, out = await call(http, "GET", f"{d.url}/sessions/{session_id}")
                assert status == 200 and out["video_url"] == video_url, out
            leftovers = [p.name for p in (data_dir / "tmp").iterdir() if p.name.startswith("upload-")]
            assert not leftovers, f"failed uploads left temp files: {leftovers}"
            status, st = await call(http, "GET", f"{d.url}/streams/{sid}/status")
            assert status == 200, st
            assert_whole_images(data_dir)
            saved_when_full = await images_saved(http, d.url)

            # Space comes back: writes work again, health recovers.
            ballast.unlink()
            body = rng.randbytes(1 << 20)
            status, out = await call(http, "POST", f"{d.url}/upload", params={"name": "after.bin"}, data=io.BytesIO(body))
            assert status == 200, out
            acknowledged[out["file_id"]] = body
            status, out = await call(http, "POST", f"{d.url}/sessions", json={"video_url": "/after"})
            assert status == 201, out
            sessions[out["id"]] = "/after"

            async def healthy():
                return (await health(http, d.url))[0] == 200
            await wait_until(healthy, timeout=10, what="/healthz ok again")

            async def camera_saves_again():
                return await images_saved(http, d.url) > saved_when_full
            await wait_until(camera_saves_again, timeout=60, what="the camera saving images again")
            status, out = await call(http, "POST", f"{d.url}/streams/{sid}/stop")
            assert status == 200, out
        assert d.stop() == 0
        d.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            for oid, body in acknowledged.items():
                assert await download(http, d.url, oid) == body
            for session_id, video_url in sessions.items():
                status, out = await call(http, "GET", f"{d.url}/sessions/{session_id}")
                assert status == 200 and out["video_url"] == video_url
        checked = fsck(data_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert_whole_images(data_dir)
    finally:
        d.kill()
        source.stop()
        camera_feed.stop()


async def images_saved(http: aiohttp.ClientSession, url: str) -> int:
    status, out = await call(http, "GET", f"{url}/motion/status")
    assert status == 200, out
    return next(c for c in out["cameras"] if c["camera"] == 1)["imagesSaved"]


def assert_whole_images(data_dir: Path) -> None:
    """Every camera image under its final name is a whole JPEG (a full disk tears nothing)."""
    for p in (data_dir / "camera" / "1").glob("*/*.jpg"):
        raw = p.read_bytes()
        assert raw[:2] == b"\xff\xd8" and raw[-2:] == b"\xff\xd9", f"torn image {p}"


# -- read-only remount ---------------------------------------------------------------------------

async def test_read_only_remount_mid_run_answers_erofs_and_recovers(small_fs, tmp_path):
    data_dir = small_fs / "data"
    d = daemon_on(data_dir, tmp_path)
    acknowledged: dict[str, bytes] = {}
    try:
        d.start(timeout=60)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for n in range(5):
                body = os.urandom(100_000)
                status, out = await call(http, "POST", f"{d.url}/upload", params={"name": f"{n}.bin"}, data=body)
                assert status == 200, out
                acknowledged[out["file_id"]] = body
            status, out = await call(http, "POST", f"{d.url}/sessions", json={"video_url": "/v"})
            assert status == 201
            sid = out["id"]

            # Uploads keep coming while the filesystem turns read-only under them.
            stop = asyncio.Event()
            answers: list[tuple[int, object]] = []

            async def uploader() -> None:
                while not stop.is_set():
                    body = os.urandom(50_000)
                    status, out = await call(http, "POST", f"{d.url}/upload", data=body)
                    answers.append((status, out))
                    if status == 200:
                        acknowledged[out["file_id"]] = body
            traffic = asyncio.create_task(uploader())

            async def remount(mode: str):
                # tmpfs refuses remount,ro while a file is open for writing (EBUSY): retry until
                # it lands between two uploads.
                done = await asyncio.to_thread(run, "mount", "-o", f"remount,{mode}", str(small_fs), check=False)
                return done.returncode == 0
            await wait_until(lambda: remount("ro"), timeout=30, interval=0.01, what="remount,ro")
            await wait_until(lambda: asyncio.sleep(0, result=any(s == 503 for s, _ in answers)), timeout=30,
                             what="an upload refused after the remount")
            stop.set()
            await traffic
            for status, out in answers:
                assert status in (200, 503), (status, out)
                if status == 503:
                    assert out["cause"] == "EROFS" and "read-only" in out["error_message"], out

            for method, path, kw in (("POST", "/upload", {"data": b"x" * 1000}),
                                     ("POST", "/sessions", {"json": {"video_url": "/w"}}),
                                     ("PUT", f"/sessions/{sid}", {"json": {"video_url": "/w"}}),
                                     ("DELETE", f"/upload/{next(iter(acknowledged))}", {})):
                status, out = await call(http, method, f"{d.url}{path}", **kw)
                assert status == 503 and out["cause"] == "EROFS", (method, path, status, out)

            async def unhealthy():
                status, out = await health(http, d.url)
                return status == 503 and out
            out = await wait_until(unhealthy, timeout=10, what="/healthz 503")
            assert out["ok"] is False and any("not writable" in p and "EROFS" in p for p in out["problems"]), out
            # Reads go on.
            for oid, body in acknowledged.items():
                assert await download(http, d.url, oid) == body
            status, out = await call(http, "GET", f"{d.url}/sessions/{sid}")
            assert status == 200 and out["video_url"] == "/v"

            await wait_until(lambda: remount("rw"), timeout=30, what="remount,rw")
            status, out = await call(http, "POST", f"{d.url}/upload", data=b"y" * 1000)
            assert status == 200, out
            status, out = await call(http, "PUT", f"{d.url}/sessions/{sid}", json={"video_url": "/w"})
            assert status == 200, out

            async def healthy():
                return (await health(http, d.url))[0] == 200
            await wait_until(healthy, timeout=10, what="/healthz ok again")
        assert d.stop() == 0
        checked = fsck(data_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        d.kill()


def test_serve_refuses_a_read_only_data_root_in_one_line(small_fs):
    (small_fs / "data").mkdir()
    run("mount", "-o", "remount,ro", str(small_fs))
    proc = subprocess.run([sys.executable, "-m", "storaged", "serve", "--data-dir", str(small_fs / "data"),
                           "--port", "0"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"storaged: cannot start: the data root {small_fs / 'data'} is not writable: "
        "Read-only file system (EROFS)"], proc.stderr


# -- tampering -------------------------------------------------------------------------------------

async def test_tampering_then_reupload_restart_and_fsck(tmp_path):
    data_dir = tmp_path / "data"
    d = Daemon(data_dir, *DAEMON_ARGS)
    bodies = [os.urandom(300_000) for _ in range(3)]
    try:
        d.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            ids = []
            for n, body in enumerate(bodies):
                status, out = await call(http, "POST", f"{d.url}/upload", params={"name": f"{n}.bin"}, data=body)
                assert status == 200
                ids.append(out["file_id"])
            sids = []
            for n in range(3):
                status, out = await call(http, "POST", f"{d.url}/sessions", json={"video_url": f"/v{n}"})
                sids.append(out["id"])
            status, out = await call(http, "POST", f"{d.url}/sessions/{sids[2]}/events",
                                     json={"time": 1.0, "type": "lap"})
            assert status == 201
        assert d.stop() == 0

        # Behind the daemon's back: bytes gone, a byte flipped, a record torn, junk around.
        def stored(oid: str) -> Path:
            od = data_dir / oid[:2] / oid[2:]
            return od / json.loads((od / "meta.json").read_bytes())["stored_name"]
        stored(ids[0]).unlink()
        with open(stored(ids[1]), "r+b") as fh:
            fh.seek(12345)
            b = fh.read(1)
            fh.seek(12345)
            fh.write(bytes([b[0] ^ 0xFF]))
        torn = data_dir / "sessions" / f"{sids[1]}.json"
        torn.write_bytes(torn.read_bytes()[:10])
        (data_dir / "junk.txt").write_text("left by someone")
        (data_dir / "sessions" / "notes.txt").write_text("not a record")
        (data_dir / "zz").write_text("a file where a fan-out directory would be")
        (data_dir / ids[2][:2] / "not-an-object").mkdir()

        d.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            status, out = await call(http, "GET", f"{d.url}/sessions/{sids[1]}")
            assert status == 500 and f"sessions/{sids[1]}.json" in out["error_message"], out
            async with http.get(f"{d.url}/sessions") as resp:
                assert [s["id"] for s in await resp.json()] == [sids[0], sids[2]]
                assert resp.headers["Storaged-Skipped-Records"] == f"sessions/{sids[1]}.json"
            status, out = await call(http, "GET", f"{d.url}/upload")
            assert status == 200 and {f["file_id"] for f in out["files"]} == set(ids)
            assert await download(http, d.url, ids[2]) == bodies[2]
            # Re-uploading the good bytes heals both damaged objects.
            for n in (0, 1):
                status, out = await call(http, "POST", f"{d.url}/upload", params={"name": f"{n}.bin"},
                                         data=bodies[n])
                assert status == 200 and out["deduplicated"] is False and out["repaired"], out
                assert await download(http, d.url, ids[n]) == bodies[n]

        found = fsck(data_dir)
        assert found.returncode == 1 and f"sessions/{sids[1]}.json" in found.stdout, found.stdout
        assert ids[0][2:] not in found.stdout and ids[1][2:] not in found.stdout, "healed objects still damaged"
        repaired = fsck(data_dir, "--repair")
        assert f"sessions/{sids[1]}.json" in repaired.stdout and "lost+found" in repaired.stdout, repaired.stdout
        assert (data_dir / "lost+found" / "sessions" / f"{sids[1]}.json").is_file()
        again = fsck(data_dir)
        assert f"sessions/{sids[1]}.json" not in again.stdout, again.stdout

        d.kill()
        d.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            for oid, body in zip(ids, bodies):
                assert await download(http, d.url, oid) == body
            async with http.get(f"{d.url}/sessions") as resp:
                assert [s["id"] for s in await resp.json()] == [sids[0], sids[2]]
                assert "Storaged-Skipped-Records" not in resp.headers
            status, out = await call(http, "GET", f"{d.url}/sessions/{sids[1]}")
            assert status == 404, out
    finally:
        d.kill()
