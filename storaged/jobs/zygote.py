"""``python -m storaged.jobs.zygote --data-dir D``: a warm parent for job workers.

Starting a worker as a fresh Python process costs a few hundred
milliseconds of interpreter start-up and imports, which dominates short jobs
(a stream-copy clip of a video takes ~0.1 s of ffmpeg).  The zygote pays that once: it
imports the worker and the job modules, then waits on stdin for job
directories, one per line.  For each it forks a child that resets its
signal dispositions, becomes a session leader (so the job and its ffmpeg are
one process group that cancel can signal), sends its output to the job's
``worker.log`` and runs the job; the zygote answers the child's pid on
stdout.

The zygote is the daemon's child and exits when its stdin closes (the daemon
stopped or died).  Workers do not depend on it: children it leaves behind
are re-parented and keep running, and the next daemon adopts them by their
``inrun.pid`` like any other worker.  The zygote ignores SIGCHLD so the
kernel reaps its finished children; each child restores the default so its
own ffmpeg subprocesses can be waited for.

It is single-threaded and runs no event loop, so forking it is safe.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

from storaged.jobs import worker
from storaged.jobs.state import WORKER_LOG

PRELOAD = ("storaged.analyses.work", "storaged.sessions.split", "storaged.camera.convert")


def _child(job_dir: Path, data_dir: Path) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setsid()
        fd = os.open(job_dir / WORKER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.INFO)
        results = worker.run_as_worker(job_dir, data_dir)
        code = 0 if results["status"] == "done" else 1
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="storaged.jobs.zygote")
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # The daemon's SIGINT/SIGTERM (a terminal's ^C reaches the whole group) must not kill us mid-fork:
    # we end when stdin closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        job_dir = Path(line.rstrip("\n"))
        if not line.strip():
            continue
        out.flush()
        pid = os.fork()
        if pid == 0:
            _child(job_dir, args.data_dir)
        print(pid, file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
