"""One owner per data root; the job runner never holds its lock across stopping a process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from storaged.supervise.process import ProcessIdentity
from tests.helpers import free_port, wait_until, wait_until_sync


def test_a_second_serve_on_the_same_root_exits_at_once_naming_the_holder(daemon, tmp_path: Path):
    first = daemon()
    # It does not wait for the holder: the holder lives on (checked below) and the run has a deadline.
    second = subprocess.run([sys.executable, "-m", "storaged", "serve", "--port", str(free_port()),
                             "--data-dir", str(first.data_dir)], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"already served by pid {first.proc.pid}" in second.stderr, second.stderr
    assert "daemon.lock" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    # The lock file stays, naming the live owner; the first daemon is untouched.
    assert (first.data_dir / "locks" / "daemon.lock").read_text().strip() == str(first.proc.pid)
    assert first.proc.poll() is None
    # fsck and gc are safe beside the live daemon: they do not need the owner lock.
    fsck = subprocess.run([sys.executable, "-m", "storaged", "fsck", "--data-dir", str(first.data_dir)],
                          capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # Once the owner is gone (even killed), the root can be served again.
    first.kill()
    again = daemon(data_dir=first.data_dir)
    assert (again.data_dir / "locks" / "daemon.lock").read_text().strip() == str(again.proc.pid)


def _term_ignoring_worker(termed: Path) -> subprocess.Popen:
    """A worker that goes on after TERM, leaving the file ``termed`` to say it was asked to stop."""
    code = ("import signal, sys, time; "
            "signal.signal(signal.SIGTERM, lambda *_: open(sys.argv[1], 'w').close()); "
            "print('ready', flush=True)\n"
            "while True: time.sleep(1)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(termed)], start_new_session=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"  # TERM is caught (and ignored) from here on
    proc.stdout.close()
    return proc


async def _adopted_term_ignoring_job(make_client, data_dir: Path, stop_timeout: float):
    """A daemon that adopted a running analysis whose worker ignores TERM.

    Answers (client, file_id, aid, job dir, worker, the file the worker leaves when it gets TERM)."""
    client = await make_client(job_stop_timeout=stop_timeout)
    resp = await client.post("/upload", params={"name": "a.bin"}, data=io.BytesIO(b"some bytes" * 100))
    file_id = (await resp.json())["file_id"]
    await client.close()
    termed = data_dir.parent / "worker-termed"
    worker = _term_ignoring_worker(termed)
    try:
        aid = "e" * 40
        job = data_dir / file_id[:2] / file_id[2:] / "analysis" / aid
        job.mkdir(parents=True)
        (job / "config.json").write_text(json.dumps({"kind": "storaged.analyses.work:run", "args": {"seconds": 0},
                                                     "analysis": "dummy", "file_id": file_id}))
        (job / "inrun.pid").write_text(json.dumps(ProcessIdentity.of(worker.pid).to_json()))
        (data_dir / "jobs" / "queue").mkdir(parents=True, exist_ok=True)
        (data_dir / "jobs" / "queue" / "00000000000000000001-aaaa.json").write_text(
            json.dumps({"job_dir": os.path.relpath(job, data_dir)}))
        client = await make_client(job_stop_timeout=stop_timeout)
        running = await client.get(f"/results/{file_id}/{aid}")
        assert running.status == 202 and running.headers["X-Job-Status"] == "running"
    except BaseException:
        _kill_group(worker)
        raise
    return client, file_id, aid, job, worker, termed


def _kill_group(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


async def test_deleting_a_job_whose_worker_ignores_term_does_not_delay_a_concurrent_analyse(
        make_client, data_dir):
    # The stop timeout outlasts any load: the worker dies when this test kills it, after the POST was
    # answered, so the DELETE cannot finish first however slow the machine is.
    client, file_id, aid, job, worker, termed = await _adopted_term_ignoring_job(make_client, data_dir, 300.0)
    try:
        delete = asyncio.create_task(client.delete(f"/results/{file_id}/{aid}"))
        # Once the worker got TERM, the DELETE is waiting it out.
        await wait_until(lambda: asyncio.sleep(0, termed.exists()), what="the DELETE to send TERM")
        resp = await client.post("/analyse", json={"file_id": file_id, "analysis": "dummy",
                                                   "args": {"seconds": 0.1}})
        assert resp.status == 200, await resp.text()
        # Answered while the DELETE still waits for the worker: it did not queue behind it.
        assert not delete.done(), "the POST was answered only after the DELETE"
        assert worker.poll() is None
        _kill_group(worker)
        answer = await delete
        assert answer.status == 200
        assert not job.exists()
    finally:
        _kill_group(worker)


async def test_deleting_a_job_whose_worker_ignores_term_kills_it_after_the_stop_timeout(make_client, data_dir):
    client, file_id, aid, job, worker, _ = await _adopted_term_ignoring_job(make_client, data_dir, 2.0)
    try:
        began = time.monotonic()
        answer = await client.delete(f"/results/{file_id}/{aid}")
        assert answer.status == 200
        assert time.monotonic() - began >= 2.0  # it did wait the stop timeout before KILL
        wait_until_sync(lambda: worker.poll() is not None, what="the worker killed")
        assert worker.returncode == -signal.SIGKILL
        assert not job.exists()
    finally:
        _kill_group(worker)


def test_the_storage_tier_replicates_what_each_family_lists(tmp_path: Path):
    """The tier's sources come from the providers: a family's files are listed by the family itself."""
    from storaged.config import Config
    from storaged.families import providers
    from storaged.provider import Provider
    from storaged.store.layout import Layout
    from storaged.tier.sources import ObjectSource, TreeFiles, sources_from

    class Toy(Provider):
        name = "toy"

        def replicable(self, root: Path):
            yield "toy/a.bin"

    layout = Layout(tmp_path)
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "1.json").write_text('{"id": 1}')
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin").write_bytes(b"x")
    sources = sources_from([*providers(layout, Config(data_dir=tmp_path)), Toy()])
    assert isinstance(sources[0], ObjectSource)
    by_family = {s.family: s for s in sources[1:]}
    assert {"sessions", "videostreams", "recording", "camera", "analyses", "toy"} <= set(by_family)
    assert all(isinstance(s, TreeFiles) for s in by_family.values())
    assert list(by_family["toy"].pending(layout)) == ["toy%2Fa.bin"]
    assert list(by_family["sessions"].pending(layout)) == ["sessions%2F1.json"]
    tier_code = (Path(__file__).resolve().parent.parent / "storaged" / "tier" / "sources.py").read_text()
    for family_dir in ('"sessions"', '"streams"', '"camera"', '"analysis"', ".jpg", ".csv"):
        assert family_dir not in tier_code
