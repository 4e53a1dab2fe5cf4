"""Kinds of data the janitor may delete, and what it must never touch.

Each kind says where its items live, how old and how big each one is, and
how to delete one safely; a family's kind is a few lines in :data:`KINDS`.
Everything here is blocking (directory walks, stats, unlinks): call it from
a thread or the command line.

Protocol
--------
*Never touched.*  Before each pass the janitor reads the job queue
(``<data>/jobs/queue/*.json``): every queued or running job's directory, the
objects its ``config.json`` names (64-hex ids and ``<ab>/<cdef…>`` object
paths anywhere in it; an analysis job's own object), the camera images in a
queued/running export's range and its output name are protected.  A stream
with a clip being cut (``clips/<id>/config.json`` without ``results.json``,
younger than an hour) keeps all its segments.  Segments written in the last
``max(60 s, 3 x stream_segment_time + stream_stall_timeout)`` are never
deleted (the live one is being written).  Pinned objects are never deleted
(see storaged.ops.pins).

*Deleting.*  An object is deleted through the object store's own delete,
holding the object's lock (``locks/objects/<id>.lock``, taken without
waiting: an object whose lock is busy is being written, pinned or deleted
and is skipped this pass); the pin and its analyses are checked again under
that lock.  Analysis and clip job directories are renamed into ``<data>/tmp``
first (they disappear in one step; a reader sees the whole job or none) and
removed from there.  A camera export whose process is finished goes together
with its job directory, under the process's lock
(``locks/camera-process/<id>.lock``, the one the camera family takes).
Segments and motion images are unlinked one by one; a run directory is
removed only once empty and not the live run, a day folder only once empty
(the camera recreates it).

*What a crash leaves.*  At worst a trash directory in ``<data>/tmp``
(swept at start-up by age) or an empty folder.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from storaged.config import Config
from storaged.jobs.state import CONFIG, PIDFILE, RESULTS, read_state
from storaged.procs import read_pidfile
from storaged.store.atomic import TMP_SUFFIX, read_json, read_json_or, sync_lock, unlink_quiet
from storaged.store.layout import OBJECT_ID_RE, Layout
from storaged.store.objects import META
from storaged.ops.pins import PIN

_HEX64 = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_OBJ_PATH = re.compile(r"/([0-9a-f]{2})/([0-9a-f]{62})(?=/|$)")
_KEY = re.compile(r"^\d{8}-\d{6}$")
_SEGMENT = re.compile(r"^r\d{6}-(?:\d{6,}|\d{8}T\d{6}Z)\.ts$")  # final names only (recording.index)
_RUN_DIR = re.compile(r"^r(\d{6})$")
_IMAGE = re.compile(r"^(\d{8}-\d{6})-\d{3}\.jpg$")
CLIP_GRACE = 3600.0


@dataclass
class Item:
    kind: str
    path: Path
    rel: str
    mtime: float
    size: int
    files: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Guard:
    """What queued and running work needs: never deleted."""

    job_dirs: set[Path] = field(default_factory=set)
    object_ids: set[str] = field(default_factory=set)
    camera_ranges: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    captures: set[str] = field(default_factory=set)

    def add_job(self, root: Path, job_dir: Path, config: Any) -> None:
        self.job_dirs.add(job_dir)
        try:
            parts = job_dir.relative_to(root).parts
        except ValueError:
            parts = ()
        if len(parts) >= 2 and OBJECT_ID_RE.match(parts[0] + parts[1]):
            self.object_ids.add(parts[0] + parts[1])
        for s in _strings(config):
            self.object_ids.update(_HEX64.findall(s))
            self.object_ids.update(a + b for a, b in _OBJ_PATH.findall(s))
        if isinstance(config, dict):
            cam, start, end = config.get("camera"), config.get("start"), config.get("end")
            if isinstance(cam, int) and isinstance(start, str) and isinstance(end, str) \
                    and _KEY.match(start) and _KEY.match(end):
                self.camera_ranges.setdefault(cam, []).append((start, end))
            elif isinstance(cam, int):
                self.camera_ranges.setdefault(cam, []).append(("", "~"))
            if isinstance(config.get("fileName"), str):
                self.captures.add(config["fileName"])

    def camera_image_protected(self, camera: int, key: str) -> bool:
        return any(lo <= key <= hi for lo, hi in self.camera_ranges.get(camera, ()))


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def queue_entries(layout: Layout) -> list[tuple[Path, Path | None]]:
    """(entry, job dir or None when it names nothing inside the root) of every queue entry."""
    qdir = layout.root / "jobs" / "queue"
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
        except (ValueError, KeyError, TypeError):
            out.append((entry, None))
            continue
        out.append((entry, job_dir if str(job_dir).startswith(str(root) + os.sep) else None))
    return out


def scan_guard(layout: Layout) -> Guard:
    guard = Guard()
    root = layout.root.resolve()
    for _entry, job_dir in queue_entries(layout):
        if job_dir is None:
            continue
        state = read_state(job_dir)
        if state is None or state.final:
            continue
        guard.add_job(root, job_dir, state.config)
    now = time.time()
    for sd in _subdirs(layout.root / "streams"):
        if not sd.name.isdigit():
            continue
        for cd in _subdirs(sd / "clips"):
            try:
                fresh = now - os.stat(cd / CONFIG).st_mtime < CLIP_GRACE
            except FileNotFoundError:
                continue
            if fresh and not (cd / RESULTS).exists():
                guard.streams.add(int(sd.name))
    return guard


@dataclass
class Env:
    layout: Layout
    config: Config
    guard: Guard
    usage: bool = False  # enumerate everything (for counting), ignoring protection
    now: float = field(default_factory=time.time)
    _captures: dict[str, Path] | None = None

    @property
    def root(self) -> Path:
        return self.layout.root

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.layout.root)


@dataclass(frozen=True)
class Kind:
    name: str
    retention: str          # the Config field with this kind's maximum age
    tier: int               # under space pressure lower tiers go first (oldest first within a tier)
    items: Callable[[Env], Iterator[Item]]
    delete: Callable[[Env, Item], bool]
    help: str = ""


# -- helpers -------------------------------------------------------------------------

def _subdirs(path: Path) -> Iterator[Path]:
    try:
        with os.scandir(path) as it:
            entries = [e for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in sorted(entries, key=lambda e: e.name):
        try:
            if e.is_dir(follow_symlinks=False):
                yield Path(e.path)
        except OSError:
            continue


def _files(path: Path) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                yield e
        except OSError:
            continue


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``; symlinks counted, not followed."""
    total = count = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
            count += 1
    return total, count


def _trash(env: Env, path: Path) -> None:
    """Make a directory disappear in one step (rename into tmp), then remove it."""
    env.layout.tmp.mkdir(parents=True, exist_ok=True)
    trash = env.layout.tmp / f".trash-{path.name[:24]}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rmdir_quiet(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _job_item(kind: str, env: Env, job_dir: Path, extra: dict[str, Any]) -> Item | None:
    try:
        mtime = os.stat(job_dir / RESULTS).st_mtime
    except FileNotFoundError:
        if not env.usage:
            return None
        try:
            mtime = os.stat(job_dir).st_mtime
        except FileNotFoundError:
            return None
    size, files = tree_size(job_dir)
    return Item(kind, job_dir, env.rel(job_dir), mtime, size, files, extra)


def _finished(job_dir: Path) -> bool:
    state = read_state(job_dir)
    return state is not None and state.final and read_pidfile(job_dir / PIDFILE) is None


# -- recordings: <data>/streams/<id>/segments/r<run>/<segment>.ts ------------------------

def _segment_grace(config: Config) -> float:
    return max(60.0, 3 * config.stream_segment_time + config.stream_stall_timeout)


def recording_items(env: Env) -> Iterator[Item]:
    grace = _segment_grace(env.config)
    for sd in _subdirs(env.root / "streams"):
        if not sd.name.isdigit():
            continue
        sid = int(sd.name)
        if not env.usage and sid in env.guard.streams:
            continue
        for rd in _subdirs(sd / "segments"):
            if not _RUN_DIR.match(rd.name):
                continue
            for e in _files(rd):
                if not _SEGMENT.match(e.name):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not env.usage and env.now - st.st_mtime < grace:
                    continue
                yield Item("recordings", Path(e.path), env.rel(Path(e.path)), st.st_mtime, st.st_size,
                           extra={"stream": sid, "run": int(rd.name[1:])})


def delete_recording(env: Env, item: Item) -> bool:
    unlink_quiet(item.path)
    run_dir = item.path.parent
    stream_dir = run_dir.parent.parent
    live = read_json_or(stream_dir / PIDFILE, None)
    identity = read_pidfile(stream_dir / PIDFILE)
    live_run = live.get("run") if isinstance(live, dict) and identity is not None and identity.alive() else None
    if live_run != item.extra.get("run"):
        try:
            os.rmdir(run_dir)
        except OSError:
            return True
        # The whole run is gone: its list goes too, so the index forgets the run.
        unlink_quiet(run_dir.parent / f"{run_dir.name}.csv")
    return True


# -- motion images: <data>/camera/<n>/<YYYYMMDD>/<YYYYMMDD-HHMMSS-mmm>.jpg -----------------

def motion_items(env: Env) -> Iterator[Item]:
    for cd in _subdirs(env.root / "camera"):
        if not cd.name.isdigit():
            continue
        cam = int(cd.name)
        for day in _subdirs(cd):
            for e in _files(day):
                m = _IMAGE.match(e.name)
                if m is None:
                    if not env.usage or e.name.startswith("."):
                        continue
                elif not env.usage and env.guard.camera_image_protected(cam, m.group(1)):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield Item("motion_images", Path(e.path), env.rel(Path(e.path)), st.st_mtime, st.st_size,
                           extra={"camera": cam})


def delete_motion(env: Env, item: Item) -> bool:
    unlink_quiet(item.path)
    _rmdir_quiet(item.path.parent)
    return True


# -- exports: <data>/shared/captures/<fileName> (+ its camera process job) ----------------

def export_items(env: Env) -> Iterator[Item]:
    for e in _files(env.root / "shared" / "captures"):
        if e.name.startswith("."):
            continue
        if not env.usage and e.name in env.guard.captures:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield Item("exports", Path(e.path), env.rel(Path(e.path)), st.st_mtime, st.st_size)


def _capture_jobs(env: Env) -> dict[str, Path]:
    if env._captures is None:
        env._captures = {}
        for jd in _subdirs(env.root / "camera" / "processes"):
            name = (read_json_or(jd / CONFIG, None) or {}).get("fileName") if (jd / CONFIG).exists() else None
            if isinstance(name, str):
                env._captures[name] = jd
    return env._captures


def delete_export(env: Env, item: Item) -> bool:
    job_dir = _capture_jobs(env).get(item.path.name)
    if job_dir is None:
        unlink_quiet(item.path)
        return True
    with sync_lock(env.layout.lock_for("camera-process", job_dir.name), timeout=0):
        if job_dir.exists() and not _finished(job_dir):
            return False
        unlink_quiet(item.path)
        if job_dir.exists():
            _trash(env, job_dir)
    return True


# -- clips: <data>/streams/<id>/clips/<clip_id>/ (job dirs; the mp4s are objects) ----------

def clip_items(env: Env) -> Iterator[Item]:
    for sd in _subdirs(env.root / "streams"):
        if not sd.name.isdigit():
            continue
        for cd in _subdirs(sd / "clips"):
            item = _job_item("clips", env, cd, {"stream": int(sd.name)})
            if item is not None:
                yield item


def delete_job_dir(env: Env, item: Item) -> bool:
    if not (item.path / RESULTS).exists() or not _finished(item.path):
        return False
    _trash(env, item.path)
    return True


# -- analyses: <data>/<ab>/<cdef…>/analysis/<analysis_id>/ ---------------------------------

def _object_dirs(env: Env) -> Iterator[tuple[str, Path]]:
    for oid in env.layout.object_ids():
        yield oid, env.layout.object_dir(oid)


def analysis_items(env: Env) -> Iterator[Item]:
    for oid, od in _object_dirs(env):
        for jd in _subdirs(od / "analysis"):
            if not env.usage and jd.resolve() in env.guard.job_dirs:
                continue
            item = _job_item("analyses", env, jd, {"object": oid})
            if item is not None:
                yield item


# -- uploads: <data>/<ab>/<cdef…>/ -----------------------------------------------------------

def upload_items(env: Env) -> Iterator[Item]:
    for oid, od in _object_dirs(env):
        if not env.usage and (oid in env.guard.object_ids or os.path.exists(od / PIN)):
            continue
        try:
            mtime = os.stat(od / META).st_mtime
        except FileNotFoundError:
            continue
        size, files = tree_size(od)
        if env.usage:
            # Analysis outputs are counted as their own kind.
            a_size, a_files = tree_size(od / "analysis")
            size, files = size - a_size, files - a_files
        yield Item("uploads", od, env.rel(od), mtime, size, files, {"object": oid})


def _busy_analyses(od: Path) -> bool:
    for jd in _subdirs(od / "analysis"):
        state = read_state(jd)
        if state is not None and not state.final:
            return True
    return False


def delete_upload(env: Env, item: Item) -> bool:
    from storaged.store.objects import ObjectStore

    oid = item.extra["object"]
    store = ObjectStore(env.layout, max_size=env.config.max_upload_size)
    with sync_lock(env.layout.object_lock(oid), timeout=0):
        od = env.layout.object_dir(oid)
        if not od.is_dir() or (od / PIN).exists() or _busy_analyses(od):
            return False
        store.delete_blocking(oid)
    return True


# -- tus uploads: <data>/uploads/<id>/ (expiry is the uploads family's own rule) -------------

def tus_upload_items(env: Env) -> Iterator[Item]:
    from storaged.uploads import service as tus

    expiry = env.config.tus_expiry
    found = tus.all_uploads(env.layout) if env.usage else tus.expired_uploads(env.layout, expiry, env.now)
    for e in found:
        # mtime = the last activity, so the age step's "older than tus_expiry" means "expired"
        yield Item("tus_uploads", e.path, env.rel(e.path), e.when - (expiry if not env.usage else 0), e.size,
                   extra={"upload": e.upload_id})


def delete_tus_upload(env: Env, item: Item) -> bool:
    from storaged.uploads import service as tus

    return tus.remove_expired(env.layout, env.config.tus_expiry, item.extra["upload"], env.now)


KINDS: list[Kind] = [
    Kind("tus_uploads", "tus_expiry", 0, tus_upload_items, delete_tus_upload,
         "expired tus uploads (unfinished, or finished records)"),
    Kind("recordings", "retention_recordings", 0, recording_items, delete_recording,
         "recorded stream segments"),
    Kind("motion_images", "retention_motion_images", 0, motion_items, delete_motion,
         "camera motion images"),
    Kind("exports", "retention_exports", 1, export_items, delete_export,
         "camera mp4/zip exports in shared/captures"),
    Kind("clips", "retention_exports", 1, clip_items, delete_job_dir,
         "stream clip jobs (their mp4s are uploads)"),
    Kind("analyses", "retention_analyses", 1, analysis_items, delete_job_dir,
         "finished analysis jobs and their outputs"),
    Kind("uploads", "retention_uploads", 2, upload_items, delete_upload,
         "stored objects (uploads, clips), unless pinned"),
]
