"""The job runner: FIFO queue in the tree, detached workers, adoption after restart.

Protocol
--------
*The queue is the tree.*  Submitting a job writes ``<job>/config.json`` and
then a queue entry ``<data>/jobs/queue/<time_ns>-<random>.json`` naming the
job directory (relative to the data root); entries sort in FIFO order.  An
entry is removed only after the job's ``results.json`` exists (or the job was
cancelled), so a crash at any instant leaves either a queued job or a
finished one, never a lost one.  A crash (or an I/O error) between the two
writes leaves a ``config.json`` without an entry: that submit was never
acknowledged, and the next submit of the same job adds the missing entry.

*Starting.*  While fewer than ``job_concurrency`` jobs run, the oldest
queued job is started.  A kind registered with :meth:`JobRunner.in_process`
(stream clips: ~0.1 s of stream copy, where a worker's start-up and the
client's polling would cost as much again) runs as a task of the daemon
itself, through the same files: the runner writes ``inrun.pid`` naming the
daemon before the task starts (no race: nothing else runs the job), the
task's outcome becomes ``results.json`` (by the worker's rules,
storaged.jobs.worker.failed_results), then ``inrun.pid`` goes.  A daemon
that dies mid-task leaves ``inrun.pid`` naming a dead process: the job is
"interrupted" like a worker's; a daemon that stops cleanly removes it, so
the job is queued again for the next start.  Cancelling one cancels its
task (its ffmpeg is stopped by the task's own stop sequence); the runner
never signals a process group that is the daemon's own.  Every other job
is forked from the zygote (storaged.jobs.zygote, a
pre-imported parent, so a job starts in milliseconds) or, failing that, as
``python -m storaged.jobs.worker --data-dir D <job>`` through
storaged.jobs.launch.  Either way the worker is detached in its own session
(its pid is its process group, so cancel can stop the worker and its ffmpeg
together, and a daemon restart does not kill it).  The worker writes
``<job>/inrun.pid`` (pid + boot id + start time) as its first act, and
removes it after its results: the daemon never writes it, since its write
could land after a short job had already finished and leave a pid file of
a dead worker beside the results.

*Finishing.*  The worker writes ``results.json`` (atomically) as its last act.
Whoever waits for a job (:meth:`JobRunner.settled`) is woken as soon as the
runner sees it finish (an in-process task at once, a worker at the next
reap), not at its next poll.  When the runner sees a worker gone, it removes ``inrun.pid`` and the queue
entry; if there were no results, it writes failed results ("interrupted").

*Adoption.*  At start-up every queue entry is examined: a job whose
``inrun.pid`` names a live process (all three of pid, boot id and start time
match) is adopted and watched; one whose worker is dead is marked failed; a
queued one waits for its turn.  A recycled pid is never mistaken for a job.

*Who waits.*  All state changes of the runner happen on the event loop under
one ``asyncio.Lock`` (the innermost lock of the global order, see
storaged.store.atomic); blocking file work runs in threads.  The lock is
never held while a process is stopped or started, so a DELETE that waits
out a worker ignoring TERM (up to ``job_stop_timeout`` and then KILL) or a
slow worker start delays no other request: a job being started is marked
*starting* under the lock and spawned outside it, and a job being cancelled
is taken off the books (running set, queue entry) under the lock and
stopped outside it.  A retry of a failed job whose worker has written its
results but not yet exited waits for that exit outside the lock too, then
looks again.  Whoever wants a job that is starting or being
cancelled waits for that to finish first.  Readers (``state``) need no lock:
they read the files.  The zygote's pipe has its own thread lock (spawns run
in threads).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from storaged.errors import NotFound
from storaged.jobs.queue import INPUTS, entries as queue_entries
from storaged.jobs.state import (CONFIG, INTERRUPTED, PIDFILE, PROGRESS, RESULTS, WORKER_LOG, JobState,
                                  log_tail, read_state)
from storaged.jobs.worker import failed_results
from storaged.supervise.backoff import woken
from storaged.supervise.process import ProcessIdentity, stop_sequence_blocking, terminate_group
from storaged.store.atomic import unlink_quiet, write_json
from storaged.store.layout import Layout
from storaged.store.objects import now_iso

log = logging.getLogger("storaged.jobs")
FINAL_CACHE_SIZE = 10_000


# An in-process kind: ``await run(job_dir, args)`` answers the results (without "status") or raises.
InProcess = Callable[[Path, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class _Running:
    job_dir: Path
    entry: Path
    identity: ProcessIdentity
    task: asyncio.Task | None = None  # an in-process job's task; None for a worker

    def alive(self) -> bool:
        return not self.task.done() if self.task is not None else self.identity.alive()


class JobRunner:
    def __init__(self, layout: Layout, *, concurrency: int, poll_interval: float = 0.1,
                 stop_timeout: float = 5.0, use_zygote: bool = True) -> None:
        self.layout = layout
        self.concurrency = max(1, concurrency)
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.queue_dir = layout.root / "jobs" / "queue"
        self._running: dict[Path, _Running] = {}
        self._lock = asyncio.Lock()
        self._busy: dict[Path, asyncio.Event] = {}  # jobs being started or cancelled outside the lock
        self._zygote_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._zygote: subprocess.Popen | None = None
        self._final: dict[str, tuple[int, JobState]] = {}
        self.use_zygote = use_zygote
        self.max_seen_running = 0
        self._in_process: dict[str, InProcess] = {}
        self._finished: dict[Path, asyncio.Event] = {}  # set when the job is seen final (for settled())
        self._self: ProcessIdentity | None = None  # the daemon, as in-process jobs' inrun.pid names it

    def in_process(self, kind: str, run: InProcess) -> None:
        """Run jobs of ``kind`` as tasks of this process (see the module protocol), not in workers."""
        self._in_process[kind] = run

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.queue_dir.mkdir, parents=True, exist_ok=True)
        self._self = await asyncio.to_thread(ProcessIdentity.of, os.getpid())
        async with self._lock:
            await self._adopt()
        self._task = asyncio.create_task(self._supervise(), name="job-runner")

    async def close(self) -> None:
        """Stop supervising.  Workers keep running: the next start adopts them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # In-process jobs end with the daemon: each task removes its inrun.pid as it is cancelled, so the
        # job (its queue entry kept) is queued again for the next start.
        tasks = [run.task for run in self._running.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._zygote is not None:
            await asyncio.to_thread(self._locked_stop_zygote)

    async def warm_up(self) -> None:
        """Start the zygote now rather than on the first job (the daemon calls this once it serves)."""
        if self.use_zygote:
            try:
                await asyncio.to_thread(self._ensure_zygote)
            except OSError as exc:
                log.warning("job zygote unavailable (%s); jobs will start the slow way", exc)

    def _ensure_zygote(self) -> None:
        with self._zygote_lock:
            if self._zygote is None or self._zygote.poll() is not None:
                self._start_zygote()

    def _locked_stop_zygote(self) -> None:
        with self._zygote_lock:
            self._stop_zygote()

    # -- the zygote: a pre-imported parent that forks workers in a millisecond ----
    def _zygote_spawn(self, job_dir: Path) -> int | None:
        """Fork a worker from the zygote (started on first use); None when it is not available."""
        if not self.use_zygote:
            return None
        with self._zygote_lock:
            try:
                if self._zygote is None or self._zygote.poll() is not None:
                    self._start_zygote()
                assert self._zygote is not None and self._zygote.stdin and self._zygote.stdout
                self._zygote.stdin.write(f"{job_dir}\n".encode())
                self._zygote.stdin.flush()
                return int(self._zygote.stdout.readline())
            except (OSError, ValueError) as exc:
                log.warning("job zygote unavailable (%s); starting the worker the slow way", exc)
                self._stop_zygote()
                return None

    def _start_zygote(self) -> None:
        self._stop_zygote()
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "storaged.jobs.zygote", "--data-dir", str(self.layout.root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(self.layout.root), close_fds=True)
        assert self._zygote.stdout is not None
        if self._zygote.stdout.readline().strip() != b"ready":
            raise OSError("the job zygote did not start")

    def _stop_zygote(self) -> None:
        zygote, self._zygote = self._zygote, None
        if zygote is None:
            return
        for pipe in (zygote.stdin, zygote.stdout):
            try:
                if pipe:
                    pipe.close()
            except OSError:
                pass
        # Its stdin closed is its "q": it ends by itself; KILL only if it does not.
        stop_sequence_blocking([(lambda: None, 5.0), (zygote.kill, 5.0)], lambda: zygote.poll() is None)
        zygote.wait()

    # -- API -----------------------------------------------------------------
    async def submit(self, job_dir: Path, kind: str, args: dict[str, Any], *,
                     meta: dict[str, Any] | None = None, retry: bool = False,
                     inputs: Sequence[str] = ()) -> JobState:
        """Queue the job (or find it).  ``inputs``: the stored objects it reads (retention keeps them)."""
        job_dir = Path(job_dir).resolve()
        while True:
            async with await self._settled_lock(job_dir):
                state = await asyncio.to_thread(read_state, job_dir)
                if state is not None:
                    if state.status == "queued" and not await asyncio.to_thread(self._has_entry, job_dir):
                        # config.json was written but its queue entry was not (an I/O error or a crash
                        # between the two): that request was never acknowledged, and nothing would ever
                        # start the job.  Enqueue it now.
                        await asyncio.to_thread(self._enqueue, job_dir, state.config, False)
                        self._wake.set()
                        return await self.state(job_dir)
                    if not (retry and state.status in ("failed", "cancelled")):
                        return state
                    exiting = self._running.get(job_dir)
                    if exiting is None or not exiting.alive():
                        # Its worker is gone: book that first, so the retry cannot race its bookkeeping.
                        await self._reap()
                        await asyncio.to_thread(self._reset, job_dir)
                        config = state.config
                        await asyncio.to_thread(self._enqueue, job_dir, config, False)
                        break
                else:
                    config = {**(meta or {}), "kind": kind, "args": args, "requested": now_iso()}
                    if inputs:
                        config[INPUTS] = {"objects": sorted(set(inputs))}
                    await asyncio.to_thread(self._enqueue, job_dir, config, True)
                    break
            # A failed job whose worker wrote its results and has not exited yet: wait for the exit
            # outside the lock (like a stop), then look again.
            await self._exited(exiting)
        self._wake.set()
        return await self.state(job_dir)

    async def state(self, job_dir: Path | str) -> JobState:
        """The job's state.  Finished states are cached, checked by one stat of results.json.

        Status polls are the daemon's most frequent request; a finished job's
        results only change through retry or cancel (which drop the cache
        entry) or by someone removing them (which the stat sees).  A single
        stat of a hot inode costs less than the thread hop a read needs.
        """
        key = str(job_dir)
        cached = self._final.get(key)
        if cached is not None:
            try:
                if os.stat(os.path.join(key, RESULTS)).st_mtime_ns == cached[0]:
                    return cached[1]
            except FileNotFoundError:
                pass
            self._final.pop(key, None)
        stamp, state = await asyncio.to_thread(_stamped_state, Path(job_dir))
        if state is None:
            raise NotFound("job not found")
        if stamp is not None and state.results is not None:
            if len(self._final) >= FINAL_CACHE_SIZE:
                self._final.pop(next(iter(self._final)))
            self._final[key] = (stamp, state)
        return state

    async def cancel(self, job_dir: Path, *, remove: bool = True) -> JobState | None:
        """Stop the job (its whole process group) and remove it, or mark it cancelled.

        Only the bookkeeping happens under the runner's lock; the stop sequence
        (TERM, ``stop_timeout``, KILL) and the removal run outside it.
        """
        job_dir = Path(job_dir).resolve()
        async with await self._settled_lock(job_dir):
            state = await asyncio.to_thread(read_state, job_dir)
            if state is None:
                raise NotFound("job not found")
            self._final.pop(str(job_dir), None)
            running = self._running.pop(job_dir, None)
            identity = running.identity if running else state.worker
            await asyncio.to_thread(self._drop_entries, job_dir)
            done = self._busy[job_dir] = asyncio.Event()
        try:
            if running is not None and running.task is not None:
                running.task.cancel()
                await asyncio.gather(running.task, return_exceptions=True)
            elif identity is not None and not self._is_self(identity):
                await asyncio.to_thread(terminate_group, identity, self.stop_timeout)
            if remove:
                await asyncio.to_thread(shutil.rmtree, job_dir, True)
                result = None
            else:
                if not state.final:
                    await asyncio.to_thread(write_json, job_dir / RESULTS,
                                            {"status": "cancelled", "error_message": "cancelled"})
                await asyncio.to_thread(unlink_quiet, job_dir / PIDFILE)
                result = await asyncio.to_thread(read_state, job_dir)
        finally:
            self._busy.pop(job_dir, None)
            done.set()
        self._announce(job_dir)
        self._wake.set()
        return result

    async def _settled_lock(self, job_dir: Path) -> "_Held":
        """The runner's lock, taken once ``job_dir`` is neither starting nor being cancelled."""
        while True:
            await self._lock.acquire()
            busy = self._busy.get(job_dir)
            if busy is None:
                return _Held(self._lock)
            self._lock.release()
            await busy.wait()

    async def wait(self, job_dir: Path, timeout: float = 60.0) -> JobState:
        """The job's final state; TimeoutError if it is not final within ``timeout``."""
        state = await self.settled(job_dir, timeout)
        if not state.final:
            raise TimeoutError(f"job {job_dir} still {state.status} after {timeout}s")
        return state

    async def settled(self, job_dir: Path, timeout: float) -> JobState:
        """The job's state once it is final, or as it is after ``timeout`` seconds.

        Woken when the runner sees the job finish; the state is also read
        every ``poll_interval`` (a job finished by another path, a removal).
        """
        job_dir = Path(job_dir).resolve()
        deadline = time.monotonic() + timeout
        while True:
            # Taken before the read: a finish announced after it sets this very event.
            event = self._finished.setdefault(job_dir, asyncio.Event())
            state = await self.state(job_dir)
            left = deadline - time.monotonic()
            if state.final or left <= 0:
                return state
            await woken(event, min(left, self.poll_interval))

    def _announce(self, job_dir: Path) -> None:
        """Wake whoever waits in settled() for this job."""
        event = self._finished.pop(job_dir, None)
        if event is not None:
            event.set()

    def running_jobs(self) -> list[Path]:
        return list(self._running)

    async def in_progress(self) -> list[tuple[Path, JobState]]:
        """Running jobs, then queued ones in queue order, with their states (for the pages people read)."""
        running = list(self._running)

        def read() -> list[tuple[Path, JobState]]:
            dirs = running + [d for _, d in self._entries() if d not in self._running]
            out = []
            for job_dir in dict.fromkeys(dirs):
                state = read_state(job_dir)
                if state is not None and not state.final:
                    out.append((job_dir, state))
            return out

        return await asyncio.to_thread(read)

    # -- internals -------------------------------------------------------------
    def _enqueue(self, job_dir: Path, config: dict[str, Any], fresh: bool) -> None:
        job_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_json(job_dir / CONFIG, config)
        rel = os.path.relpath(job_dir, self.layout.root)
        entry = self.queue_dir / f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        write_json(entry, {"job_dir": rel})

    def _reset(self, job_dir: Path) -> None:
        self._final.pop(str(job_dir), None)
        for name in (RESULTS, PROGRESS, PIDFILE):
            unlink_quiet(job_dir / name)

    def _entries(self) -> list[tuple[Path, Path]]:
        """The queue, FIFO; entries that are unreadable or name nothing inside the root are dropped."""
        out = []
        for entry, job_dir in queue_entries(self.layout):
            if job_dir is None:
                unlink_quiet(entry)
                continue
            out.append((entry, job_dir))
        return out

    def _has_entry(self, job_dir: Path) -> bool:
        job_dir = job_dir.resolve()
        return any(target == job_dir for _, target in self._entries())

    def _drop_entries(self, job_dir: Path) -> None:
        job_dir = job_dir.resolve()
        for entry, target in self._entries():
            if target == job_dir:
                unlink_quiet(entry)

    async def _adopt(self) -> None:
        for entry, job_dir in await asyncio.to_thread(self._entries):
            state = await asyncio.to_thread(read_state, job_dir)
            if state is None or state.results is not None:
                if state is not None:
                    await asyncio.to_thread(unlink_quiet, job_dir / PIDFILE)
                await asyncio.to_thread(unlink_quiet, entry)
            elif state.status == "running" and state.worker is not None and self._is_self(state.worker):
                # An in-process job of an earlier runner in this same process, whose task is gone.
                log.warning("job %s: its in-process task is gone; marking it failed", job_dir)
                await asyncio.to_thread(self._finish_dead, job_dir, entry)
            elif state.status == "running" and state.worker is not None:
                log.info("adopted running job %s (pid %d)", job_dir, state.worker.pid)
                self._running[job_dir.resolve()] = _Running(job_dir.resolve(), entry, state.worker)
            elif state.status == "failed":
                log.warning("job %s: worker died while the daemon was away; marking it failed", job_dir)
                await asyncio.to_thread(self._finish_dead, job_dir, entry)

    def _finish_dead(self, job_dir: Path, entry: Path) -> None:
        if not (job_dir / RESULTS).exists() and (job_dir / CONFIG).exists():
            tail = log_tail(job_dir / WORKER_LOG)
            write_json(job_dir / RESULTS, {"status": "failed", "error_message": INTERRUPTED, "stderr": tail})
        unlink_quiet(job_dir / PIDFILE)
        unlink_quiet(entry)

    async def _supervise(self) -> None:
        while True:
            try:
                async with self._lock:
                    await self._reap()
                    picked = await self._pick_queued()
                await self._start(picked)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job runner pass failed; retrying")
            self._wake.clear()
            await woken(self._wake, self.poll_interval)

    async def _exited(self, run: _Running) -> None:
        """Wait (holding no lock) until a job's worker or task has ended."""
        while run.alive():
            if run.task is not None:
                await asyncio.wait([run.task])
            else:
                await asyncio.sleep(self.poll_interval)

    async def _reap(self) -> None:
        for job_dir, run in list(self._running.items()):
            if run.alive():
                continue
            del self._running[job_dir]
            await asyncio.to_thread(self._finish_dead, job_dir, run.entry)
            state = await asyncio.to_thread(read_state, job_dir)
            log.info("job %s finished: %s", job_dir, state.status if state else "removed")
            self._announce(job_dir)

    async def _pick_queued(self) -> list[tuple[Path, Path, asyncio.Event, dict[str, Any]]]:
        """Under the lock: the oldest queued jobs that fit (with their configs), marked as starting."""
        picked: list[tuple[Path, Path, asyncio.Event, dict[str, Any]]] = []
        if len(self._running) >= self.concurrency:
            return picked
        for entry, job_dir in await asyncio.to_thread(self._entries):
            if len(self._running) + len(picked) >= self.concurrency:
                break
            if job_dir in self._running or job_dir in self._busy:
                continue
            state = await asyncio.to_thread(read_state, job_dir)
            if state is None or state.results is not None:
                await asyncio.to_thread(unlink_quiet, entry)
                continue
            if state.status != "queued":
                await asyncio.to_thread(self._finish_dead, job_dir, entry)
                continue
            event = self._busy[job_dir] = asyncio.Event()
            picked.append((job_dir, entry, event, state.config))
        return picked

    async def _start(self, picked: list[tuple[Path, Path, asyncio.Event, dict[str, Any]]]) -> None:
        """Outside the lock: spawn each picked job (or start its task), then book it under the lock."""
        for job_dir, entry, event, config in picked:
            try:
                run_here = self._in_process.get(config.get("kind"))
                if run_here is not None:
                    run = await self._start_in_process(job_dir, entry, run_here, config.get("args") or {})
                else:
                    run = await asyncio.to_thread(self._spawn, job_dir, entry)
            except BaseException:
                self._busy.pop(job_dir, None)
                event.set()
                raise
            async with self._lock:
                self._busy.pop(job_dir, None)
                if run is not None:
                    self._running[job_dir] = run
                    self.max_seen_running = max(self.max_seen_running, len(self._running))
            event.set()

    async def _start_in_process(self, job_dir: Path, entry: Path, run: InProcess,
                                args: dict[str, Any]) -> _Running:
        assert self._self is not None, "start() first"
        # Not fsynced: lost with a power cut, the job reads queued (its entry is durable) and runs again.
        await asyncio.to_thread(write_json, job_dir / PIDFILE, self._self.to_json(), durable=False)
        task = asyncio.get_running_loop().create_task(self._run_in_process(job_dir, run, args),
                                                      name=f"job-{job_dir.name}")
        log.info("started job %s in the daemon", job_dir)
        return _Running(job_dir, entry, self._self, task)

    async def _run_in_process(self, job_dir: Path, run: InProcess, args: dict[str, Any]) -> None:
        try:
            results = {"status": "done", **(await run(job_dir, args) or {})}
        except asyncio.CancelledError:
            # The daemon stops (or the job is cancelled): not running any more, and no results.
            await asyncio.shield(asyncio.to_thread(unlink_quiet, job_dir / PIDFILE))
            raise
        except Exception as exc:
            results = failed_results(exc)
        await asyncio.to_thread(self._publish_results, job_dir, results)
        self._announce(job_dir)
        self._wake.set()  # the supervisor reaps it (queue entry) and starts the next job

    @staticmethod
    def _publish_results(job_dir: Path, results: dict[str, Any]) -> None:
        """The worker's last acts, for an in-process job: results, then no longer running."""
        write_json(job_dir / RESULTS, results)
        unlink_quiet(job_dir / PIDFILE)

    def _is_self(self, identity: ProcessIdentity) -> bool:
        own = self._self
        return own is not None and (identity.pid, identity.boot_id, identity.start_ticks) == \
            (own.pid, own.boot_id, own.start_ticks)

    def _spawn(self, job_dir: Path, entry: Path) -> _Running | None:
        pid = self._zygote_spawn(job_dir)
        if pid is None:
            worker = [sys.executable, "-m", "storaged.jobs.worker", "--data-dir", str(self.layout.root),
                      str(job_dir)]
            launched = subprocess.run([sys.executable, "-m", "storaged.jobs.launch", str(job_dir / WORKER_LOG),
                                       "--", *worker], stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                                      cwd=str(self.layout.root))
            try:
                pid = int(launched.stdout)
            except ValueError:
                err = launched.stderr.decode(errors="replace")
                log.error("job %s: could not start a worker: %s", job_dir, err)
                write_json(job_dir / RESULTS, {"status": "failed", "error_message": "could not start a worker",
                                               "stderr": err.splitlines()[-20:]})
                unlink_quiet(entry)
                return None
        identity = ProcessIdentity.of(pid)
        if identity is None:
            # Already finished (or died at once): its results, or their absence, tell the story.
            self._finish_dead(job_dir, entry)
            return None
        log.info("started job %s (pid %d)", job_dir, pid)
        return _Running(job_dir, entry, identity)

def _stamped_state(job_dir: Path) -> tuple[int | None, JobState | None]:
    """The state plus the mtime of results.json as seen *before* reading it (so a change after is seen)."""
    try:
        stamp = os.stat(job_dir / RESULTS).st_mtime_ns
    except FileNotFoundError:
        stamp = None
    return stamp, read_state(job_dir)


class _Held:
    """An already acquired asyncio.Lock, released on leaving the ``async with``."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info) -> None:
        self.lock.release()
