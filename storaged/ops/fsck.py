"""fsck: verify the tree like ``git fsck``; ``--repair`` sets damaged things aside.

Protocol
--------
*What is checked.*  Every stored object is re-hashed (in a thread pool) and
its ``meta.json``, size and ``the_file`` link compared; every JSON file of
the tree is parsed (objects' own bytes are never parsed: an upload may be
any file); every job directory (a directory with ``config.json``) is read
like the runner reads it: an ``inrun.pid`` naming no live process is stale,
a finished job whose ``outputs`` are not there is damaged; every queue entry
must be readable and name a job that still waits or runs, and nothing else
may sit in ``jobs/`` or ``jobs/queue/``; every entry at the top of the data
root must be an object fan-out directory, the store's own (``tmp``,
``locks``, ``lost+found``, ``cache``, ``jobs``) or a directory a family's provider
claims; every object a record or a queued job references must be stored.
Then each family's provider runs its own checks (events whose session is
gone, analysis outputs, recorded segments against their run's list: see
storaged.provider and the families' provider.py).  Temp files
(``*.tmp``) anywhere, and entries of ``<data>/tmp``, are strays once older than
``temp_max_age`` plus the daemon's sweep period and a minute (a SIGKILL leaves
the temp of the write it interrupted beside its file or in ``tmp/``; until
``temp_max_age`` it cannot be told from a write in flight, and a running daemon
removes it within a sweep period after that).
``--deep`` asks the providers for their slow checks too (ffprobe of every recorded segment).

*Live daemon.*  fsck takes no lock for reading: objects are immutable and
every other file is replaced by rename, so it reads whole files.  Before it
moves an object it takes the object's lock (``locks/objects/<id>.lock``,
the lock commit and delete take) and checks again; an object whose lock
stays busy is skipped.  Young temp files (writes in flight) are left alone.
A queue entry of a finished job is stale only once a minute old (the runner
removes it when it reaps the worker).

*Repair.*  Damaged items move to ``<data>/lost+found/<their relative path>``
(a suffix ``.1``, ``.2``... when that name is taken), never deleted; a damaged
``results.json`` is replaced with failed results; a stale pid file is turned
into failed results ("interrupted", like the runner does); dangling queue
entries and stray temps are removed; strays in the root and in ``jobs/``
move to lost+found.  A reference to an object that is not stored is left
as it is (the record is the user's: upload the bytes again, or edit the
record).  Every repaired line says, after ``->``, what was done.  Each
family's own checks and repairs (recorded segments against their run's
list, analysis outputs, orphan events) are in its provider's ``fsck``.

Exit status: 0 clean; 1 problems found (all repaired with ``--repair``);
4 problems left after ``--repair``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from filelock import Timeout

from storaged.config import Config
from storaged.config import human_size as human
from storaged.jobs.queue import active_inputs, entries as queue_entries, queue_dir
from storaged.jobs.state import CONFIG, FINAL, INTERRUPTED, PIDFILE, RESULTS, WORKER_LOG, log_tail
from storaged.supervise.process import read_pidfile
from storaged.provider import Provider, Scan, collect_references
from storaged.store.atomic import (TMP_SUFFIX, fsync_dir, read_json, read_json_or, sync_lock, unlink_quiet,
                                   write_json)
from storaged.store import snapshot
from storaged.store.layout import OBJECT_ID_RE, RESERVED_TOP, Layout
from storaged.store.objects import META, THE_FILE, sweep_period, verify_object
from storaged.tier.evict import verified_remote
from storaged.tier.sources import remote_state

TEMP_GRACE = 60.0
# How long after a job finished its queue entry may still be there: a live runner drops the entry when it
# reaps the worker (at its next pass), a stopped daemon at its next start.  Counted from the results, not
# from the entry, whose age is how long the job waited for its turn.
QUEUE_GRACE = 60.0
LOST = "lost+found"
JOBS_TOP = "jobs"
_QUEUE_NAME = re.compile(r"^\d{20}-[0-9a-f]+\.json$")
_FANOUT = re.compile(r"^[0-9a-f]{2}$")


@dataclass
class Problem:
    what: str
    rel: str
    detail: str
    repaired: str = ""

    def line(self) -> str:
        return f"{self.what} {self.rel}: {self.detail}" + (f" -> {self.repaired}" if self.repaired else "")


class Fsck:
    def __init__(self, layout: Layout, config: Config, providers: Iterable[Provider], *,
                 repair: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None, workers: int | None = None, deep: bool = False) -> None:
        self.deep = deep
        self.layout = layout
        self.providers = list(providers)
        self.root = layout.root
        self.config = config
        self.repair = repair
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.problems: list[Problem] = []
        self.counts = {"objects": 0, "bytes": 0, "json": 0, "jobs": 0, "queue": 0}
        self.family_counts: dict[str, int] = {}  # what providers checked, by label ("recorded segments")
        self._job_dirs: list[Path] = []

    # -- driver -------------------------------------------------------------------
    def run(self) -> int:
        if not self.root.is_dir():
            print(f"fsck: {self.root} is not a directory", file=self.err)
            return 4
        self.check_top()
        self.check_objects()
        self.walk_tree()
        self.check_jobs()
        self.check_queue()
        self.check_references()
        self.check_snapshots()
        for provider in self.providers:
            provider.fsck(self)
        c = self.counts
        left = [p for p in self.problems if not p.repaired]
        print(f"fsck: checked {c['objects']} objects ({human(c['bytes'])}), {c['json']} JSON files, "
              f"{c['jobs']} jobs, {c['queue']} queue entries"
              + "".join(f", {n} {label}" for label, n in self.family_counts.items()) + "; "
              f"{len(self.problems)} problem(s)"
              + (f", {len(self.problems) - len(left)} repaired" if self.repair else ""), file=self.out)
        if not self.problems:
            return 0
        return 4 if self.repair and left else 1

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)
        print(problem.line(), file=self.out, flush=True)

    def count(self, label: str, n: int) -> None:
        """A provider checked ``n`` more things of this kind (shown in the summary line)."""
        self.family_counts[label] = self.family_counts.get(label, 0) + n

    def problem(self, what: str, path: Path, detail: str, repair: Callable[[], str] | None = None) -> None:
        """Report a problem a check found; with --repair, ``repair()`` fixes it and says what it did."""
        problem = Problem(what, self.rel(path), detail)
        if self.repair and repair is not None:
            try:
                problem.repaired = repair()
            except OSError as exc:
                problem.detail += f" (repair failed: {exc})"
        self.report(problem)

    # -- what sits where ------------------------------------------------------------
    def check_top(self) -> None:
        """Every entry at the top of the root belongs to the store, the job engine or a family."""
        claimed = set(RESERVED_TOP) | {JOBS_TOP, self.layout.cache.name}
        for provider in self.providers:
            claimed.update(provider.top_dirs)
        for name in sorted(os.listdir(self.root)):
            path = self.root / name
            if name in claimed or name.startswith("."):
                continue
            if _FANOUT.match(name) and path.is_dir() and not path.is_symlink():
                continue
            self.problem("stray", path, "not an object, the store's or any family's",
                         lambda path=path: self.to_lost_found(path))
        jobs = self.root / JOBS_TOP
        for name in sorted(_listdir(jobs)):
            if name != "queue":
                self.problem("stray", jobs / name, "only queue/ belongs in jobs/",
                             lambda path=jobs / name: self.to_lost_found(path))
        for name in sorted(_listdir(queue_dir(self.layout))):
            path = queue_dir(self.layout) / name
            if _QUEUE_NAME.match(name) or name.endswith(TMP_SUFFIX):
                continue
            self.counts["queue"] += 1
            self.problem("junk queue entry", path, "not a queue entry's name (<time_ns>-<hex>.json)",
                         lambda path=path: self.to_lost_found(path))

    def check_snapshots(self) -> None:
        """A catalogue snapshot the next start would trust although record files changed behind it."""
        for path in sorted(self.layout.cache.glob("*.snapshot")):
            found = snapshot.verify(path)
            if found is None:
                continue
            where, changed = found
            detail = (f"{len(changed)} record file(s) of {where} changed in place since it was written "
                      f"(e.g. {changed[0]}.json)" if changed else "unreadable")
            self.problem("stale snapshot", path, detail + "; the catalogue would start from it",
                         lambda path=path: (snapshot.drop(path), "removed (the next start reads every record)")[1])

    def check_references(self) -> None:
        """Objects that records and queued jobs point to must be stored."""
        scan = Scan(self.layout, self.config)
        refs = collect_references(self.providers, scan)
        for oid, who in active_inputs(self.layout):
            refs.add(oid, who)
        for oid, whos in sorted(refs.objects.items()):
            if (self.layout.object_dir(oid) / META).exists():
                continue
            for who in sorted(set(whos)):
                self.problem("dangling reference", self.root / who.removeprefix("job "), f"points to object {oid}, which is not stored",
                             lambda: "left as is: upload the bytes again, or change the record")

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def to_lost_found(self, path: Path) -> str:
        final = self.layout.lost_found_for(path)
        os.rename(path, final)
        fsync_dir(path.parent)
        return "moved to " + self.rel(final)

    # -- objects ------------------------------------------------------------------
    def check_objects(self) -> None:
        ids = list(self.layout.object_ids())
        total = len(ids)
        last_print = time.monotonic()
        done = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fsck") as pool:
            # Chunks keep the pool's backlog (and memory) bounded on big trees.
            for start in range(0, total, 256):
                for oid, size, trouble in pool.map(self._verify_object, ids[start:start + 256]):
                    done += 1
                    self.counts["bytes"] += size
                    if trouble is not None:
                        self._damaged_object(oid, trouble)
                    if time.monotonic() - last_print > 2.0:
                        last_print = time.monotonic()
                        print(f"fsck: objects {done}/{total}, {human(self.counts['bytes'])} hashed",
                              file=self.err, flush=True)
        self.counts["objects"] = total

    def _verify_object(self, oid: str) -> tuple[str, int, str | None]:
        """(id, bytes hashed, what is wrong or None).  Runs in a pool thread; takes no lock (objects are immutable)."""
        od = self.layout.object_dir(oid)
        size, trouble = verify_object(od, oid)
        if trouble is not None and not od.exists():
            return oid, 0, None  # deleted meanwhile
        if trouble is not None and trouble.startswith("the bytes (") and trouble.endswith(") are missing"):
            meta = read_json_or(od / META, None) or {}
            if verified_remote(remote_state(self.layout, oid), oid, meta.get("size")):
                return oid, 0, None  # evicted: the storage tier holds the verified bytes (fsck --remote checks them)
        return oid, size, trouble

    def _damaged_object(self, oid: str, trouble: str) -> None:
        od = self.layout.object_dir(oid)
        problem = Problem("damaged object", self.rel(od), trouble)
        if self.repair:
            try:
                with sync_lock(self.layout.object_lock(oid), timeout=30):
                    # Look again under the lock: it may have been deleted or re-committed meanwhile.
                    _, _, again = self._verify_object(oid)
                    if again is None:
                        return
                    if again.startswith("the_file link"):
                        meta = read_json(od / META)
                        unlink_quiet(od / THE_FILE)
                        os.symlink(meta["stored_name"], od / THE_FILE)
                        fsync_dir(od)
                        problem.repaired = "link recreated"
                    else:
                        problem.repaired = self.to_lost_found(od)
            except Timeout:
                problem.detail += " (busy: left for the next run)"
        self.report(problem)

    # -- the tree: JSON files, temps, job dirs --------------------------------------
    def _walk(self) -> Iterator[tuple[Path, list[str], list[str]]]:
        for top in sorted(os.listdir(self.root)):
            path = self.root / top
            if top in RESERVED_TOP or not path.is_dir() or path.is_symlink():
                continue
            if len(top) == 2 and all(c in "0123456789abcdef" for c in top):
                subs = sorted(os.listdir(path))
                yield path, [], [s for s in subs if s.endswith(TMP_SUFFIX)]
                for sub in subs:
                    if not OBJECT_ID_RE.match(top + sub):
                        continue
                    obj = path / sub
                    try:
                        names = os.listdir(obj)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    try:
                        stored = read_json(obj / META).get("stored_name")
                    except (OSError, ValueError, AttributeError):
                        stored = None
                    # meta.json was checked with the object; its bytes may be any file at all.
                    yield obj, [], sorted(n for n in names if n == "pinned" or n.endswith(TMP_SUFFIX)
                                          or (n.endswith(".json") and n not in (META, stored)))
                    if (obj / "analysis").is_dir():
                        yield from _os_walk(obj / "analysis")
                continue
            yield from _os_walk(path)

    def walk_tree(self) -> None:
        now = time.time()
        # <data>/tmp: old entries only (young ones are writes in flight).
        try:
            tmp_entries = sorted(os.listdir(self.layout.tmp))
        except FileNotFoundError:
            tmp_entries = []
        for name in tmp_entries:
            path = self.layout.tmp / name
            age = _age(path, now)
            # A running daemon sweeps these every sweep_period once older than temp_max_age.
            if age is not None and age > self.config.temp_max_age + sweep_period(self.config.temp_max_age) \
                    + TEMP_GRACE:
                self._stray(path, f"left in tmp/ {age:.0f}s ago")
        for dirpath, dirnames, filenames in self._walk():
            for name in list(dirnames):
                if name.endswith(TMP_SUFFIX):
                    dirnames.remove(name)
                    self._maybe_stray(dirpath / name, now)
            if CONFIG in filenames:
                self._job_dirs.append(dirpath)
            for name in filenames:
                path = dirpath / name
                if name.endswith(TMP_SUFFIX):
                    self._maybe_stray(path, now)
                elif name.endswith(".json") or name == "pinned":
                    self._check_json(path)

    def _maybe_stray(self, path: Path, now: float) -> None:
        age = _age(path, now)
        if age is not None and age > self.config.temp_max_age + sweep_period(self.config.temp_max_age) + TEMP_GRACE:
            self._stray(path, f"stray temp file, {age:.0f}s old")

    def _stray(self, path: Path, detail: str) -> None:
        problem = Problem("stray temp", self.rel(path), detail)
        if self.repair:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                unlink_quiet(path)
            problem.repaired = "removed"
        self.report(problem)

    def _check_json(self, path: Path) -> None:
        if path.parent == self.root / "jobs" / "queue":
            return  # check_queue reads the entries
        try:
            read_json(path)
        except FileNotFoundError:
            return
        except ValueError:
            pass
        else:
            self.counts["json"] += 1
            return
        self.counts["json"] += 1
        problem = Problem("damaged JSON", self.rel(path), "not valid JSON")
        if self.repair:
            if path.name == CONFIG and path.parent in self._job_dirs:
                # A job without its config is not a job: set the whole directory aside.
                self._job_dirs.remove(path.parent)
                problem.repaired = self.to_lost_found(path.parent)
            else:
                problem.repaired = self.to_lost_found(path)
                if path.name == RESULTS and (path.parent / CONFIG).exists():
                    write_json(path, {"status": "failed", "stderr": [],
                                      "error_message": "results.json was damaged (see lost+found)"})
                    problem.repaired += "; the job is marked failed"
        self.report(problem)

    # -- jobs and the queue -----------------------------------------------------------
    def check_jobs(self) -> None:
        for job_dir in self._job_dirs:
            if not (job_dir / CONFIG).exists():
                continue
            self.counts["jobs"] += 1
            self._check_pid(job_dir)
            self._check_outputs(job_dir)

    def _check_pid(self, job_dir: Path) -> None:
        pidfile = job_dir / PIDFILE
        if not pidfile.exists():
            return
        identity = read_pidfile(pidfile)
        if identity is not None and identity.alive():
            return
        finished_for = _age(job_dir / RESULTS, time.time())
        has_results = finished_for is not None
        if not pidfile.exists():
            # Its worker finished between our looks (results, then no pid file, then exit): not stale.
            return
        if has_results and finished_for <= QUEUE_GRACE:
            # Finished a moment ago: the runner drops the pid file when it reaps the worker.
            return
        detail = "pid file of a dead worker" + ("" if has_results else ", and no results")
        problem = Problem("stale job", self.rel(job_dir), detail)
        if self.repair:
            if not has_results:
                write_json(job_dir / RESULTS, {"status": "failed", "error_message": INTERRUPTED,
                                               "stderr": log_tail(job_dir / WORKER_LOG)})
            unlink_quiet(pidfile)
            resolved = job_dir.resolve()
            for entry, target in queue_entries(self.layout):
                if target == resolved:
                    unlink_quiet(entry)  # as the runner does once a worker is gone
            problem.repaired = "pid file removed" + ("" if has_results else ", job marked failed")
        self.report(problem)

    def _check_outputs(self, job_dir: Path) -> None:
        try:
            results = read_json(job_dir / RESULTS)
        except (FileNotFoundError, ValueError):
            return
        if not isinstance(results, dict) or results.get("status", "done") != "done":
            return
        outputs = results.get("outputs")
        missing = [o for o in outputs if isinstance(o, str) and not (job_dir / o).exists()] \
            if isinstance(outputs, list) else []
        if not missing:
            return
        self.problem("damaged job", job_dir,
                     f"results list outputs that are missing: {', '.join(sorted(set(missing))[:5])}",
                     lambda: self.to_lost_found(job_dir) + " (ask again to redo it)")

    def check_queue(self) -> None:
        now = time.time()
        for entry, job_dir in queue_entries(self.layout):
            self.counts["queue"] += 1
            detail = None
            if job_dir is None:
                detail = "unreadable, or names nothing inside the data root"
            elif not (job_dir / CONFIG).exists():
                detail = f"names {self.rel(job_dir)}, which is not a job"
            else:
                identity = read_pidfile(job_dir / PIDFILE)
                if _final(job_dir) and (identity is None or not identity.alive()) \
                        and (_age(job_dir / RESULTS, now) or 0.0) > QUEUE_GRACE:
                    detail = f"names {self.rel(job_dir)}, which has finished"
            if detail is None:
                continue
            problem = Problem("dangling queue entry", self.rel(entry), detail)
            if self.repair:
                unlink_quiet(entry)
                problem.repaired = "removed"
            self.report(problem)


def _os_walk(top: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(filenames)


def _age(path: Path, now: float) -> float | None:
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return None


def _final(job_dir: Path) -> bool:
    try:
        results = read_json(job_dir / RESULTS)
    except FileNotFoundError:
        return False
    except ValueError:
        return True
    return not isinstance(results, dict) or results.get("status", "done") in FINAL


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
