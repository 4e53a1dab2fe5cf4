"""The job engine's in-process kinds (stream clips) share the one state machine with worker jobs,
and the runner's retry path waits for a finished worker's exit without holding its lock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storaged.errors import NotFound
from storaged.jobs.queue import entries
from storaged.jobs.runner import JobRunner
from storaged.jobs.state import CONFIG, INTERRUPTED, PIDFILE, RESULTS, read_state
from storaged.store.atomic import write_json
from storaged.store.layout import Layout
from storaged.supervise.process import ProcessIdentity, read_pidfile, write_pidfile
from tests.helpers import dead_process, queue_entry, wait_until

KIND = "tests.in_process:job"  # only ever run by the runner's registry, never imported by a worker
DUMMY = "storaged.analyses.work:run"


class Blocking:
    """An in-process kind that runs until released; records how it ended."""

    def __init__(self, released: bool = False) -> None:
        self.release = asyncio.Event()
        if released:
            self.release.set()
        self.started: list[Path] = []
        self.cancelled: list[Path] = []

    async def __call__(self, job_dir: Path, args: dict) -> dict:
        self.started.append(job_dir)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job_dir)
            raise
        if args.get("fail"):
            raise ValueError("the cut went wrong")
        return {"answer": args.get("n", 0) * 2}


def _layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    layout.ensure()
    (layout.root / "jobs" / "queue").mkdir(parents=True)
    return layout


async def _runner(layout: Layout, kind: Blocking | None = None, **kw) -> JobRunner:
    runner = JobRunner(layout, concurrency=kw.pop("concurrency", 2), poll_interval=0.05, use_zygote=False, **kw)
    if kind is not None:
        runner.in_process(KIND, kind)
    await runner.start()
    return runner


def _queued_for(layout: Layout, job: Path) -> bool:
    return any(target == job.resolve() for _, target in entries(layout))


async def test_an_in_process_job_runs_through_the_same_files_as_a_worker_job(tmp_path):
    layout = _layout(tmp_path)
    kind = Blocking()
    runner = await _runner(layout, kind)
    job = layout.root / "streams" / "1" / "clips" / "a"
    try:
        await runner.submit(job, KIND, {"n": 21})
        assert (job / CONFIG).exists() and _queued_for(layout, job)
        await wait_until(lambda: asyncio.sleep(0, kind.started), what="the task to start")
        state = await runner.state(job)
        assert state.status == "running"
        # inrun.pid names the daemon itself while the task runs.
        assert read_pidfile(job / PIDFILE).pid == os.getpid()
        kind.release.set()
        state = await runner.settled(job, 30)
        assert state.status == "done" and state.results == {"status": "done", "answer": 42}
        assert not (job / PIDFILE).exists()
        await wait_until(lambda: asyncio.sleep(0, not _queued_for(layout, job)), what="the queue entry to go")
    finally:
        await runner.close()


async def test_an_in_process_job_that_raises_is_failed_by_the_workers_rules(tmp_path):
    layout = _layout(tmp_path)
    kind = Blocking(released=True)
    runner = await _runner(layout, kind)
    job = layout.root / "jobs-x" / "b"
    try:
        await runner.submit(job, KIND, {"fail": True})
        state = await runner.settled(job, 30)
        assert state.status == "failed"
        assert state.error == "ValueError: the cut went wrong"
        # A retry runs it again (here it fails again: the same args).
        await runner.submit(job, KIND, {}, retry=True)
        assert (await runner.settled(job, 30)).status == "failed"
        assert len(kind.started) == 2
    finally:
        await runner.close()


async def test_waiting_for_an_in_process_job_is_woken_by_its_end_not_by_a_poll(tmp_path):
    layout = _layout(tmp_path)
    kind = Blocking()
    runner = await _runner(layout, kind)
    runner.poll_interval = 3600.0  # a waiter that relied on polling would never see the end
    job = layout.root / "jobs-x" / "c"
    try:
        await runner.submit(job, KIND, {"n": 1})
        await wait_until(lambda: asyncio.sleep(0, kind.started), what="the task to start")
        waiter = asyncio.create_task(runner.settled(job, 3600))
        kind.release.set()
        state = await asyncio.wait_for(waiter, 60)
        assert state.status == "done"
    finally:
        await runner.close()


async def test_a_runner_that_stops_mid_job_leaves_it_queued_and_the_next_start_runs_it(tmp_path):
    layout = _layout(tmp_path)
    kind = Blocking()
    runner = await _runner(layout, kind)
    job = layout.root / "jobs-x" / "d"
    await runner.submit(job, KIND, {"n": 2})
    await wait_until(lambda: asyncio.sleep(0, kind.started), what="the task to start")
    await runner.close()
    assert kind.cancelled == [job.resolve()]
    assert read_state(job).status == "queued" and _queued_for(layout, job)

    runner = await _runner(layout, Blocking(released=True))
    try:
        state = await runner.settled(job, 60)
        assert state.status == "done" and state.results["answer"] == 4
    finally:
        await runner.close()


async def test_an_in_process_job_of_a_killed_daemon_is_interrupted_and_a_retry_runs_it(tmp_path):
    """What a daemon killed mid-job leaves: config.json, its queue entry, inrun.pid naming the dead daemon."""
    layout = _layout(tmp_path)
    job = layout.root / "jobs-x" / "e"
    job.mkdir(parents=True)
    write_json(job / CONFIG, {"kind": KIND, "args": {"n": 5}})
    write_pidfile(job / PIDFILE, dead_process())
    queue_entry(layout.root, job)
    kind = Blocking(released=True)
    runner = await _runner(layout, kind)
    try:
        state = await runner.state(job)
        assert state.status == "failed" and state.error == INTERRUPTED
        assert not _queued_for(layout, job) and not (job / PIDFILE).exists()
        await runner.submit(job, KIND, {"n": 5}, retry=True)
        state = await runner.settled(job, 60)
        assert state.status == "done" and state.results["answer"] == 10
    finally:
        await runner.close()


async def test_cancelling_an_in_process_job_cancels_its_task_and_signals_no_process_group(tmp_path):
    layout = _layout(tmp_path)
    kind = Blocking()
    runner = await _runner(layout, kind, stop_timeout=0.5)
    job = layout.root / "jobs-x" / "f"
    try:
        await runner.submit(job, KIND, {})
        await wait_until(lambda: asyncio.sleep(0, kind.started), what="the task to start")
        sent: list[int] = []
        real_killpg = os.killpg

        def recording_killpg(pgid: int, sig: int) -> None:
            sent.append(pgid)
            real_killpg(pgid, sig)

        os.killpg = recording_killpg
        try:
            state = await runner.cancel(job, remove=False)
        finally:
            os.killpg = real_killpg
        assert kind.cancelled == [job.resolve()]
        assert sent == []
        assert state.status == "cancelled" and not (job / PIDFILE).exists()
        await runner.cancel(job)
        with pytest.raises(NotFound):
            await runner.state(job)
    finally:
        await runner.close()


async def test_a_retry_waiting_for_a_finished_worker_to_exit_does_not_hold_up_other_submits(tmp_path):
    """A worker has written failed results and not exited yet; a retry waits for its exit, while a
    submit of another job goes through (on the lock, it would wait as long as the worker lingers)."""
    layout = _layout(tmp_path)
    job = layout.root / "jobs-x" / "lingering"
    job.mkdir(parents=True)
    write_json(job / CONFIG, {"kind": DUMMY, "analysis": "dummy", "args": {"seconds": 0}})
    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        write_pidfile(job / PIDFILE, ProcessIdentity.of(lingering.pid))
        queue_entry(layout.root, job)
        runner = await _runner(layout)
        try:
            assert (await runner.state(job)).status == "running"  # adopted
            write_json(job / RESULTS, {"status": "failed", "error_message": "boom"})  # its last act
            retry = asyncio.create_task(runner.submit(job, DUMMY, {}, retry=True))
            other_job = layout.root / "jobs-x" / "other"
            other = asyncio.create_task(runner.submit(other_job, DUMMY, {"seconds": 0},
                                                      meta={"analysis": "dummy"}))
            await asyncio.wait_for(asyncio.shield(other), 60)
            assert lingering.poll() is None and not retry.done()
            lingering.kill()
            lingering.wait()
            await asyncio.wait_for(retry, 60)
            assert (await runner.wait(job, 120)).status == "done"
            assert (await runner.wait(other_job, 120)).status == "done"
        finally:
            await runner.close()
    finally:
        if lingering.poll() is None:
            os.killpg(lingering.pid, signal.SIGKILL)
            lingering.wait()
