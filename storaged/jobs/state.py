"""A job's state, read off its directory alone.

A job directory holds::

    config.json     what was asked: {"kind", "args", "requested", ...}; written first
    inrun.pid       present only while a worker runs it: {pid, boot_id, start_ticks}
    progress.json   optional: {"progress": 0..1}
    results.json    written last, atomically: {"status": "done"|"failed"|"cancelled", ...}
    worker.log      the worker's own stdout/stderr
    <outputs>       the files the job produced

The state is derived like this, and nothing else is consulted:

* no ``config.json``                         → not a job
* ``results.json``                           → its ``status``
* ``inrun.pid`` naming a live process        → running (pid + boot id + start time must all match)
* ``inrun.pid`` naming no live process       → failed ("interrupted": the worker died without results),
                                               unless results appeared meanwhile (read again after
                                               the worker is seen dead: it writes them before it exits)
* otherwise                                  → queued (unless results appeared meanwhile)

The pid file is looked at once: a job whose worker writes it between two looks is starting, not dead.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storaged.supervise.process import ProcessIdentity, read_pidfile
from storaged.store.atomic import read_json, read_json_or

CONFIG = "config.json"
PIDFILE = "inrun.pid"
PROGRESS = "progress.json"
RESULTS = "results.json"
WORKER_LOG = "worker.log"
FINAL = ("done", "failed", "cancelled")
INTERRUPTED = "interrupted: the worker died before it wrote its results"


@dataclass
class JobState:
    status: str
    progress: float | None = None
    results: dict[str, Any] | None = None
    error: str | None = None
    stderr: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    worker: ProcessIdentity | None = None
    # What the HTTP layer renders from a finished state once (the runner caches finished states,
    # and polls ask for the same one many times a second).  Not part of the state.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("memo")
        out["worker"] = self.worker.to_json() if self.worker else None
        return out


def read_state(job_dir: Path) -> JobState | None:
    """The state of the job in ``job_dir``; None when it is not a job.  Blocking."""
    job_dir = Path(job_dir)
    try:
        config = read_json(job_dir / CONFIG)
    except FileNotFoundError:
        return None
    results = _read_results(job_dir)
    if results is not None:
        status = results.get("status", "done")
        return JobState(
            status=status if status in FINAL else "done",
            progress=1.0 if status == "done" else None,
            results=results,
            error=results.get("error_message") if status != "done" else None,
            stderr=list(results.get("stderr", [])) if status != "done" else [],
            config=config,
        )
    # One look at the pid file: a second one (say, "is it there?" after "what does it say?") could
    # see the file a worker wrote in between and call a job that is just starting dead.
    try:
        identity = ProcessIdentity.from_json(read_json(job_dir / PIDFILE))
    except FileNotFoundError:
        # Not started, or its worker wrote its results and removed the pid file since our first
        # look: results read now are its last word.
        if (job_dir / RESULTS).exists():
            return read_state(job_dir)
        return JobState(status="queued", progress=None, config=config)
    except ValueError:
        identity = None
    if identity is None:
        # A pid file we cannot parse was torn by nothing we wrote (writes are atomic): treat it like a
        # dead worker.
        return JobState(status="failed", error=INTERRUPTED, config=config)
    if identity.alive():
        progress = read_json_or(job_dir / PROGRESS, {}) or {}
        return JobState(status="running", progress=progress.get("progress"), config=config, worker=identity)
    # The worker may have written its results and exited between our two looks; it writes
    # results before it exits, so results read after seeing it dead are its last word.
    if (job_dir / RESULTS).exists():
        return read_state(job_dir)
    return JobState(status="failed", error=INTERRUPTED, config=config, worker=identity)


def finished(job_dir: Path) -> bool:
    """The job has its results and no live worker: it may be removed."""
    state = read_state(job_dir)
    if state is None or not state.final or state.results is None:
        return False
    worker = read_pidfile(Path(job_dir) / PIDFILE)
    return worker is None or not worker.alive()


def _read_results(job_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json(job_dir / RESULTS)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"status": "failed", "error_message": "results.json is unreadable"}
    return data if isinstance(data, dict) else {"status": "done", "result": data}


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a worker's log, for the error report of a job that died without results."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            return fh.read().decode("utf-8", "replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []
