"""``python -m storaged.jobs.worker --data-dir D <job dir>``: run one job, write its results.

The worker is started detached (own session) by the runner.  It writes its
identity to ``inrun.pid`` first, imports the job's ``kind`` ("package.module:function"), calls it with a
:class:`~storaged.jobs.context.JobContext`, and writes ``results.json``
atomically as its very last act: ``{"status": "done", ...returned}`` or
``{"status": "failed", "error_message", "stderr"}``.  If it is killed before
that, the runner marks the job failed ("interrupted"); after it, it removes
``inrun.pid``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from storaged.errors import StoragedError
from storaged.jobs.context import JobContext
from storaged.jobs.state import CONFIG, PIDFILE, RESULTS
from storaged.supervise.ffmpeg import FFmpegError
from storaged.supervise.process import ProcessIdentity, write_pidfile
from storaged.store.atomic import read_json, unlink_quiet, write_json

log = logging.getLogger("storaged.worker")


# Kinds written into config.json by earlier versions, where the code now lives.
MOVED_KINDS = {"storaged.jobs.analyses:run": "storaged.analyses.work:run"}


def resolve(kind: str):
    kind = MOVED_KINDS.get(kind, kind)
    module_name, _, func_name = kind.partition(":")
    if not module_name.startswith("storaged.") or not func_name:
        raise ValueError(f"not a job kind: {kind!r}")
    return getattr(importlib.import_module(module_name), func_name)


def run_as_worker(job_dir: Path, data_dir: Path) -> dict:
    """A worker process's whole life (zygote child or ``main``): name itself in inrun.pid, run the job."""
    # First act: inrun.pid names this process for exactly as long as it may still write results.
    identity = ProcessIdentity.of(os.getpid())
    if identity is not None:
        write_pidfile(job_dir / PIDFILE, identity)
    return run_job(job_dir, data_dir)


def run_job(job_dir: Path, data_dir: Path) -> dict:
    config = read_json(job_dir / CONFIG)
    ctx = JobContext(job_dir, data_dir, config)
    try:
        func = resolve(config["kind"])
        results = {"status": "done", **(func(ctx) or {})}
    except Exception as exc:  # the job failed; say why and keep the daemon's view consistent
        results = failed_results(exc)
    # Logged before results.json appears: whoever sees the results (the daemon, a client polling
    # /results) must find the job's own account of its end in worker.log already.
    log.info("job %s: %s", job_dir, results["status"])
    write_json(job_dir / RESULTS, results)
    # The job is no longer running: results first, so no reader ever sees neither file.
    unlink_quiet(job_dir / PIDFILE)
    return results


def failed_results(exc: Exception) -> dict:
    """A failed job's results: what a worker and an in-process job (storaged.jobs.runner) both write."""
    if isinstance(exc, FFmpegError):
        return {"status": "failed", "error_message": exc.message, "stderr": exc.stderr}
    if isinstance(exc, StoragedError):
        return {"status": "failed", "error_message": exc.message, "stderr": []}
    log.error("job failed", exc_info=exc)
    return {"status": "failed", "error_message": f"{type(exc).__name__}: {exc}", "stderr": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="storaged.jobs.worker")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("job_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run_as_worker(args.job_dir, args.data_dir)
    return 0 if results["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
