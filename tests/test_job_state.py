"""A job's state read off its directory while its worker finishes."""

from __future__ import annotations

import os

from storaged.jobs import state as job_state
from storaged.jobs.state import CONFIG, PIDFILE, RESULTS, read_state
from storaged.store import atomic
from storaged.store.atomic import unlink_quiet, write_json
from storaged.supervise.process import ProcessIdentity, write_pidfile


def test_a_worker_that_finishes_between_the_readers_looks_is_seen_done(tmp_path, monkeypatch):
    """The reader sees no results, then the pid file; meanwhile the worker writes its results,
    removes the pid file and exits.  That job is done, not "interrupted"."""
    job = tmp_path / "job"
    job.mkdir()
    write_json(job / CONFIG, {"kind": "storaged.analyses.work:run", "args": {}})
    write_pidfile(job / PIDFILE, ProcessIdentity.of(os.getpid()))

    def worker_finishes_and_exits(self) -> bool:
        write_json(job / RESULTS, {"status": "done", "answer": 42})
        unlink_quiet(job / PIDFILE)
        return False

    monkeypatch.setattr(job_state.ProcessIdentity, "alive", worker_finishes_and_exits)
    state = read_state(job)
    assert state.status == "done", state
    assert state.results["answer"] == 42


def test_a_worker_dead_without_results_is_interrupted(tmp_path, monkeypatch):
    job = tmp_path / "job"
    job.mkdir()
    write_json(job / CONFIG, {"kind": "storaged.analyses.work:run", "args": {}})
    write_pidfile(job / PIDFILE, ProcessIdentity.of(os.getpid()))
    monkeypatch.setattr(job_state.ProcessIdentity, "alive", lambda self: False)
    state = read_state(job)
    assert state.status == "failed"
    assert state.error == job_state.INTERRUPTED


def test_a_worker_that_starts_between_the_readers_looks_is_not_called_dead(tmp_path, monkeypatch):
    """The reader finds no pid file; the worker, just forked, writes it at that moment.  That job is
    starting (queued or running), not "interrupted": the analyses FIFO test once got a 500 for a job
    that went on to finish."""
    job = tmp_path / "job"
    job.mkdir()
    write_json(job / CONFIG, {"kind": "storaged.analyses.work:run", "args": {}})
    real_open = open

    def worker_starts_after_the_look(path, *args, **kwargs):
        try:
            return real_open(path, *args, **kwargs)
        except FileNotFoundError:
            if os.path.basename(path) == PIDFILE:
                write_pidfile(job / PIDFILE, ProcessIdentity.of(os.getpid()))
            raise

    monkeypatch.setattr(atomic, "open", worker_starts_after_the_look, raising=False)
    state = read_state(job)
    assert (job / PIDFILE).exists()  # the worker did start during the read
    assert state.status in ("queued", "running"), state


def test_a_worker_that_finishes_after_the_results_look_and_before_the_pid_look_is_seen_done(tmp_path, monkeypatch):
    job = tmp_path / "job"
    job.mkdir()
    write_json(job / CONFIG, {"kind": "storaged.analyses.work:run", "args": {}})
    write_pidfile(job / PIDFILE, ProcessIdentity.of(os.getpid()))
    real_open = open

    def worker_finishes_before_the_pid_look(path, *args, **kwargs):
        if os.path.basename(path) == PIDFILE and not (job / RESULTS).exists():
            write_json(job / RESULTS, {"status": "done", "answer": 42})
            unlink_quiet(job / PIDFILE)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", worker_finishes_before_the_pid_look, raising=False)
    state = read_state(job)
    assert state.status == "done", state
    assert state.results["answer"] == 42
