"""Reading the job queue (``<data>/jobs/queue/*.json``) and the inputs jobs declare.

The runner owns the queue (see storaged.jobs.runner for its protocol); this
module is the one reader of it, shared by the runner, retention and fsck.

*Declared inputs.*  A job's ``config.json`` names the stored objects it
reads under ``"inputs": {"objects": [<id>, …]}`` (written by
:meth:`JobRunner.submit`).  While the job is queued or running, retention
never deletes those objects.  Nothing else in a config is parsed to guess
what a job needs.

Blocking: call from a thread or the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from storaged.jobs.state import read_state
from storaged.store.atomic import read_json
from storaged.store.layout import OBJECT_ID_RE, Layout

INPUTS = "inputs"


def queue_dir(layout: Layout) -> Path:
    return layout.root / "jobs" / "queue"


def entries(layout: Layout) -> list[tuple[Path, Path | None]]:
    """(entry, job dir or None when it is unreadable or names nothing inside the root) of every entry, FIFO."""
    qdir = queue_dir(layout)
    out: list[tuple[Path, Path | None]] = []
    try:
        names = sorted(os.listdir(qdir))
    except FileNotFoundError:
        return out
    root = layout.root.resolve()
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        entry = qdir / name
        try:
            job_dir = (root / read_json(entry)["job_dir"]).resolve()
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, OSError):
            out.append((entry, None))
            continue
        out.append((entry, job_dir if str(job_dir).startswith(str(root) + os.sep) else None))
    return out


def declared_inputs(config: Any) -> list[str]:
    """The object ids a job's config declares as its inputs."""
    if not isinstance(config, dict) or not isinstance(config.get(INPUTS), dict):
        return []
    objects = config[INPUTS].get("objects")
    if not isinstance(objects, list):
        return []
    return [o for o in objects if isinstance(o, str) and OBJECT_ID_RE.match(o)]


def active_jobs(layout: Layout) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(job dir, config) of every queued or running job."""
    seen: set[Path] = set()
    for _entry, job_dir in entries(layout):
        if job_dir is None or job_dir in seen:
            continue
        seen.add(job_dir)
        state = read_state(job_dir)
        if state is not None and not state.final:
            yield job_dir, state.config


def active_inputs(layout: Layout) -> Iterator[tuple[str, str]]:
    """(object id, who) for every input a queued or running job declares."""
    for job_dir, config in active_jobs(layout):
        who = "job " + os.path.relpath(job_dir, layout.root)
        for oid in declared_inputs(config):
            yield oid, who
