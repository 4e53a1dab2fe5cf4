"""Every write path of the store with an I/O error injected at each system call in turn.

Like SQLite's I/O-error tests: for each kind of call a write makes — file
write, fsync, rename, mkdir, symlink, link — the operation is run with the
N-th such call (on a path under the data root) raising ``OSError(EIO)``, for
N = 1, 2, … until it completes without reaching the fault.  Each faulted run
must fail cleanly (an error answer or an exception, never a hang and never a
success), acknowledge nothing, and leave the tree consistent: fsck clean, no
temp file left behind, and whatever it was writing either absent/old or
complete.  The same request must then succeed with the fault gone.

Paths with an HTTP entry go through the real app (aiohttp test client on
loopback): POST /upload (ObjectStore.put), POST/PUT/DELETE /sessions
(RecordStore.create/update/delete), POST /analyse (JobRunner.submit).  The
others are called directly: ObjectStore.put_file_blocking, RecordStore with
random ids, JobRunner.cancel (the "cancelled" results write), and the
worker's results write (storaged.jobs.worker.run_job).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from storaged.app import create_app
from storaged.config import Config
from storaged.analyses import work as analyses
from storaged.errors import StoragedError
from storaged.jobs.runner import JobRunner
from storaged.jobs.state import CONFIG as JOB_CONFIG, RESULTS, read_state
from storaged.jobs.worker import run_job
from storaged.families import providers
from storaged.provider import Provider
from storaged.ops.fsck import Fsck
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore
from storaged.store.records import RecordStore
from tests.helpers import json_of, wait_until, wait_until_sync

SYSCALLS = ("write", "fsync", "rename", "mkdir", "symlink", "link")
MAX_N = 200  # no write path makes this many calls of one kind; reaching it means a loop


class Faults:
    """Patches os.* and builtins.open so that the ``nth`` call of ``kind`` under ``root`` raises EIO."""

    def __init__(self, root: Path, kind: str, nth: int) -> None:
        self.root = str(root)
        self.kind, self.nth = kind, nth
        self.calls = 0
        self.fired = False
        self._lock = threading.Lock()

    def _under(self, *paths: Any) -> bool:
        for p in paths:
            if isinstance(p, int):
                try:
                    p = os.readlink(f"/proc/self/fd/{p}")
                except OSError:
                    continue
            if isinstance(p, (str, os.PathLike)) and os.fspath(p).startswith(self.root):
                return True
        return False

    def hit(self, kind: str, *paths: Any) -> None:
        if kind != self.kind or not self._under(*paths):
            return
        if kind == "mkdir" and os.path.lexists(paths[0]):
            return  # fails with EEXIST whatever the disk does; callers with exist_ok rightly ignore it
        with self._lock:
            self.calls += 1
            if self.calls != self.nth:
                return
            self.fired = True
        raise OSError(errno.EIO, f"injected EIO at {kind} call #{self.nth}")

    @contextlib.contextmanager
    def active(self):
        real = {name: getattr(os, name) for name in ("write", "fsync", "rename", "mkdir", "symlink", "link")}
        real_open = builtins.open
        faults = self

        def wrap(name: str, kind: str, npaths: int):
            fn = real[name]

            def patched(*args, **kwargs):
                faults.hit(kind, *args[:npaths])
                return fn(*args, **kwargs)
            return patched

        class File:
            """A file object whose writes are fault points (Python file writes bypass os.write)."""

            def __init__(self, fh, path) -> None:
                self._fh, self._path = fh, path

            def write(self, data):
                faults.hit("write", self._path)
                return self._fh.write(data)

            def __getattr__(self, name):
                return getattr(self._fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

        def patched_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wxa+") and isinstance(file, (str, os.PathLike)):
                return File(fh, file)
            return fh

        os.write = wrap("write", "write", 1)
        os.fsync = wrap("fsync", "fsync", 1)
        os.rename = wrap("rename", "rename", 2)
        os.mkdir = wrap("mkdir", "mkdir", 1)
        os.symlink = wrap("symlink", "symlink", 2)
        os.link = wrap("link", "link", 2)
        builtins.open = patched_open
        try:
            yield self
        finally:
            for name, fn in real.items():
                setattr(os, name, fn)
            builtins.open = real_open


class JobsOfTheseTests(Provider):
    """The job directories these tests make outside any family: claimed, so fsck does not call them strays."""

    top_dirs = ("cancel-jobs", "worker-jobs")


def fsck_clean(root: Path) -> None:
    out = io.StringIO()
    layout, config = Layout(root), Config(data_dir=root)
    code = Fsck(layout, config, [*providers(layout, config), JobsOfTheseTests()], out=out,
                err=io.StringIO()).run()
    assert code == 0, out.getvalue()
    # A temp that stays was left behind by a failed write; one that goes was a write in flight (the
    # job runner starting a job a failed submit had queued before its fault, as mutmut's slow runs showed).
    first = {str(p.relative_to(root)) for p in root.rglob("*.tmp")}
    try:
        wait_until_sync(lambda: not first & {str(p.relative_to(root)) for p in root.rglob("*.tmp")},
                        timeout=10, what="temp files to go")
    except AssertionError:
        left = first & {str(p.relative_to(root)) for p in root.rglob("*.tmp")}
        raise AssertionError(f"a failed write left temp files behind: {sorted(left)}") from None


async def sweep(root: Path, attempt: Callable[[], Awaitable[bool]],
                after_failure: Callable[[], Awaitable[None]] | None = None,
                prepare: Callable[[], Awaitable[None]] | None = None) -> dict[str, int]:
    """Run ``attempt`` with each syscall kind failing at call 1, 2, … ; answers the faults fired per kind.

    ``attempt`` answers True when the operation was acknowledged (it must answer
    False or raise when a fault fired); ``after_failure`` checks what is visible then;
    ``prepare`` sets up each attempt's preconditions before the faults are armed.
    """
    fired: dict[str, int] = {}
    for kind in SYSCALLS:
        for nth in range(1, MAX_N):
            if prepare is not None:
                await prepare()
            faults = Faults(root, kind, nth)
            with faults.active():
                try:
                    ok = await asyncio.wait_for(attempt(), 30)  # a fault must never turn into a hang
                except (OSError, RuntimeError, StoragedError) as exc:
                    assert faults.fired, f"{kind}#{nth}: failed without a fault: {exc!r}"
                    if isinstance(exc, StoragedError):
                        assert exc.status == 503 and exc.extra.get("cause") == "EIO", (kind, nth, exc)
                    ok = False
            if not faults.fired:
                assert ok, f"{kind}#{nth}: no fault was injected but the operation failed"
                break
            assert not ok, f"{kind}#{nth}: the fault fired, yet the operation was acknowledged"
            await asyncio.to_thread(fsck_clean, root)
            if after_failure is not None:
                await after_failure()
            fired[kind] = nth
        else:
            pytest.fail(f"{kind}: still failing after {MAX_N} faults")
    return fired


@pytest.fixture
def fast_config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, access_log=False, janitor_interval=0, metrics_interval=3600,
                  min_free="0", job_concurrency=1)


@pytest.fixture
async def app_client(aiohttp_client, fast_config):
    return await aiohttp_client(create_app(fast_config))


# -- object put ------------------------------------------------------------------------------

async def test_upload_under_io_errors(app_client, data_dir):
    layout = Layout(data_dir)
    n = 0
    current: dict[str, Any] = {}

    async def attempt() -> bool:
        nonlocal n
        n += 1
        body = f"upload {n} ".encode() * 5000
        current["id"] = hashlib.sha256(body).hexdigest()
        resp = await app_client.post("/upload", params={"name": f"u{n}.bin"}, data=body)
        out = await json_of(resp)
        if resp.status == 200:
            assert out["file_id"] == current["id"]
            return True
        assert resp.status == 503 and "(EIO)" in out["error_message"] and out["cause"] == "EIO", (resp.status, out)
        return False

    async def after_failure() -> None:
        # Not acknowledged: the object is absent, or (fault after the final rename) complete.
        obj = layout.object_dir(current["id"])
        if obj.exists():
            meta = json.loads((obj / "meta.json").read_bytes())
            assert meta["file_id"] == current["id"]
        resp = await app_client.get(f"/upload/{current['id']}")
        assert resp.status in (200, 404)

    fired = await sweep(data_dir, attempt, after_failure)
    assert {"write", "fsync", "rename", "mkdir", "symlink"} <= set(fired), fired


async def test_put_file_blocking_under_io_errors(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    store = ObjectStore(layout, max_size=1 << 30)
    n = 0
    src = layout.tmp / "output.mp4"  # a worker's output, inside the root but not a stray at its top

    async def prepare() -> None:
        nonlocal n
        n += 1
        src.write_bytes(f"clip {n}".encode() * 1000)

    async def attempt() -> bool:
        meta = await asyncio.to_thread(store.put_file_blocking, src, "clip.mp4")
        return meta["file_id"] == hashlib.sha256(f"clip {n}".encode() * 1000).hexdigest()

    async def after_failure() -> None:
        # Move semantics: a failed put consumes its source (the worker that made it fails and is redone).
        src.unlink(missing_ok=True)

    fired = await sweep(data_dir, attempt, after_failure, prepare)
    assert {"fsync", "rename", "symlink"} <= set(fired), fired


# -- record writes ---------------------------------------------------------------------------

async def test_session_create_update_delete_under_io_errors(app_client, data_dir):
    async def create() -> bool:
        resp = await app_client.post("/sessions", json={"video_url": "/download/x"})
        if resp.status == 201:
            return True
        assert resp.status == 503 and "(EIO)" in await resp.text(), await resp.text()
        return False

    fired_create = await sweep(data_dir, create)

    resp = await app_client.post("/sessions", json={"video_url": "old"})
    sid = (await resp.json())["id"]
    n = 0

    async def update() -> bool:
        nonlocal n
        n += 1
        resp = await app_client.put(f"/sessions/{sid}", json={"video_url": f"new-{n}"})
        if resp.status == 200:
            return True
        assert resp.status == 503 and "(EIO)" in await resp.text(), await resp.text()
        return False

    async def update_visible() -> None:
        # The old content or the new, whole: never torn, never something else.
        record = json.loads((data_dir / "sessions" / f"{sid}.json").read_bytes())
        assert record["video_url"] == "old" or record["video_url"].startswith("new-")

    fired_update = await sweep(data_dir, update, update_visible)

    victims: list[int] = []

    async def new_victim() -> None:
        if not victims:
            resp = await app_client.post("/sessions", json={})
            victims.append((await resp.json())["id"])

    async def delete() -> bool:
        resp = await app_client.delete(f"/sessions/{victims[0]}")
        if resp.status == 200:
            victims.pop()
            return True
        assert resp.status == 503 and "(EIO)" in await resp.text(), await resp.text()
        return False

    async def still_there_or_gone() -> None:
        resp = await app_client.get(f"/sessions/{victims[0]}")
        assert resp.status in (200, 404)
        if resp.status == 404:
            victims.pop()  # the unlink happened before the directory fsync failed

    await sweep(data_dir, delete, still_there_or_gone, new_victim)
    assert (await app_client.get(f"/sessions/{sid}")).status == 200
    assert {"write", "fsync", "rename"} <= set(fired_create) and {"write", "fsync", "rename"} <= set(fired_update)


async def test_random_id_records_under_io_errors(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    store = RecordStore(layout, "videostreams", ids="random53")
    created: list[dict] = []

    async def create() -> bool:
        created.append(await store.create({"stream_url": "rtsp://cam/1"}))
        return True

    fired = await sweep(data_dir, create)
    assert {"write", "fsync", "rename"} <= set(fired), fired
    for record in created:
        assert await store.get(record["id"]) == record


# -- job state writes ------------------------------------------------------------------------

async def test_analysis_submit_under_io_errors(app_client, data_dir):
    up = await app_client.post("/upload", params={"name": "in.bin"}, data=b"input" * 100)
    file_id = (await up.json())["file_id"]
    n = 0
    acknowledged: list[str] = []

    async def all_done():
        for aid in acknowledged:
            resp = await app_client.get(f"/results/{file_id}/{aid}")
            if resp.status != 200:
                return False
        return True

    async def prepare() -> None:
        nonlocal n
        n += 1
        # The runner is idle before each attempt, so its own writes (pid files) never meet the fault.
        await wait_until(all_done, timeout=60, what="every acknowledged analysis done (none stuck queued)")

    def ask():
        return app_client.post("/analyse", json={"file_id": file_id, "analysis": "dummy",
                                                 "args": {"seconds": n / 1000}})

    async def submit() -> bool:
        resp = await ask()
        body = await json_of(resp)
        if resp.status == 200:
            acknowledged.append(body["analysis_id"])
            return True
        assert resp.status == 503 and "(EIO)" in str(body), body
        return False

    async def retry_succeeds() -> None:
        # The same request once the fault is gone: accepted, and it really runs (prepare waits for it).
        resp = await ask()
        assert resp.status == 200, await resp.text()
        acknowledged.append((await resp.json())["analysis_id"])

    fired = await sweep(data_dir, submit, retry_succeeds, prepare)
    assert {"write", "fsync", "rename", "mkdir"} <= set(fired), fired
    await wait_until(all_done, timeout=60, what="every acknowledged analysis done (none stuck queued)")


async def test_job_cancel_under_io_errors(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    runner = JobRunner(layout, concurrency=1)  # not started: jobs stay queued, and cancel writes their state
    job_dir = data_dir / "cancel-jobs" / "c1"

    async def prepare() -> None:
        state = await runner.submit(job_dir, analyses.KIND, {"seconds": 0}, meta={"analysis": "dummy"},
                                    retry=True)
        assert state.status == "queued"

    async def cancel() -> bool:
        state = await runner.cancel(job_dir, remove=False)
        assert state is not None and state.status == "cancelled"
        return True

    async def not_torn() -> None:
        state = await asyncio.to_thread(read_state, job_dir)
        assert state is not None and state.status in ("queued", "cancelled")

    fired = await sweep(data_dir, cancel, not_torn, prepare)
    assert {"write", "fsync", "rename"} <= set(fired), fired


async def test_worker_results_write_under_io_errors(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    n = 0

    def job_dir() -> Path:
        return data_dir / "worker-jobs" / f"w{n}"

    async def prepare() -> None:
        nonlocal n
        n += 1
        job_dir().mkdir(parents=True)
        (job_dir() / JOB_CONFIG).write_text(json.dumps(
            {"kind": analyses.KIND, "analysis": "dummy", "args": {"seconds": 0}}))

    async def attempt() -> bool:
        return await asyncio.to_thread(lambda: run_job(job_dir(), data_dir)["status"] == "done")

    async def not_half_done() -> None:
        # A failed results write leaves no results (the runner then marks the job failed,
        # "interrupted") or complete ones (the fault hit the directory fsync after the rename).
        state = read_state(job_dir())
        assert state is not None and state.status in ("queued", "done")
        if (job_dir() / RESULTS).exists():
            assert json.loads((job_dir() / RESULTS).read_bytes())["status"] == "done"

    fired = await sweep(data_dir, attempt, not_half_done, prepare)
    assert {"write", "fsync", "rename"} <= set(fired), fired
