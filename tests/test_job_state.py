"""A job's state read off its directory while its worker finishes."""

from __future__ import annotations

import os

from storaged.jobs import state as job_state
from storaged.jobs.state import CONFIG, PIDFILE, RESULTS, read_state
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
