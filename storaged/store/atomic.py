"""Atomic, durable writes and per-thing locks.

Protocol
--------
*Writes.*  A file under a final name is only ever created by ``rename`` (or
``link``) of a complete, fsynced temp file that lives in the same directory
(or in ``<data>/tmp`` on the same filesystem); afterwards the directory is
fsynced so the new name survives a power cut.  Temp files are named
``.<name>.<random>.tmp`` so that ``fsck`` and the start-up sweep can tell
them from real data.

*What a reader sees.*  The old content or the new, never a torn file.  A
reader needs no lock.

*What a crash leaves.*  At worst a stray ``*.tmp`` file (swept by age at
start-up and while the daemon runs, ``ObjectStore.sweep_temps``; reported by
``fsck`` if older); never a partial file under a final name.

*Locks.*  One lock file per thing (object, record, job, stream) under
``<data>/locks/``; lock files are never unlinked while the daemon runs
(unlinking a lock file someone waits on would let two holders in).  Every
critical section creates a *new* lock object: a shared ``filelock`` instance
is re-entrant and would exclude nothing between coroutines of one process.
Waiting happens in a worker thread (``run_in_executor``), never on the event
loop, and coroutines of one process first queue in FIFO order on an
in-process lock per path (``PathLock``), so they do not starve each other
polling the file.  Writers of the same thing wait for each other; readers
never wait.

*The global lock order.*  Whoever holds more than one lock takes them in
this order, outermost first, and never the other way round:

1. ``locks/daemon.lock``: the data root's owner (storaged.store.owner), taken
   once by ``serve`` and held for its life; nothing ever waits on it.
2. A family's lock on a whole thing: ``locks/sessions/<id>.children.lock``
   (a session's races, events and split), ``locks/camera-process/<id>.lock``
   (an export), ``locks/uploads/<id>.lock`` (a tus upload; publishing it
   commits an object under 4), a stream's in-process lock
   (storaged.recording.supervisor).
3. Record locks: ``locks/<kind>/.create.lock`` (never nested with another
   record's lock) and ``locks/<kind>/<id>.lock``.
4. Object locks: ``locks/objects/<id>.lock`` (POST /analyse submits its job
   under it, after the storage tier fetched evicted bytes back under it;
   pins, commits, deletes, eviction, fsck and the janitor take it).
5. The job runner's in-process ``asyncio.Lock`` (storaged.jobs.runner):
   innermost.  The runner takes no other lock while holding it, and never
   holds it across stopping or starting a process.

The janitor and fsck take locks 2 and 4 without waiting (``timeout=0``) and
skip a busy thing for the next pass, so a pass never queues behind a request.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from filelock import AsyncFileLock, FileLock, Timeout

from storaged.errors import storage_fault

TMP_SUFFIX = ".tmp"


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raise_storage_fault(exc: OSError) -> None:
    """Raise the domain error of a disk fault (full, read-only, I/O error), naming its cause."""
    fault = storage_fault(exc)
    if fault is not None:
        raise fault from exc


def write_bytes(final: Path, data: bytes, *, durable: bool = True, sync_dir: bool = True,
                exclusive: bool = False) -> bool:
    """Atomically replace ``final`` with ``data``; answers True.  Blocking: call in a thread.

    ``sync_dir`` False leaves the directory's fsync to the caller (a group
    commit, :class:`DirSync`); the name is not durable until it happens.
    ``exclusive``: never replace; publish with ``os.link`` (see :func:`publish`) and answer False,
    writing nothing, when ``final`` already exists.  ``data`` may be a list of bytes-like parts
    (a large file written without joining them first).
    """
    final = Path(final)
    tmp = temp_name(final)
    try:
        with open(tmp, "xb") as fh:
            for part in data if isinstance(data, list) else (data,):
                fh.write(part)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if exclusive:
            return publish(tmp, final)
        os.rename(tmp, final)
    except OSError as exc:
        unlink_quiet(tmp)
        raise_storage_fault(exc)
        raise
    except BaseException:
        unlink_quiet(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(final.parent)
    return True


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json(final: Path, obj: Any, *, durable: bool = True) -> None:
    write_bytes(final, dumps(obj), durable=durable)


def read_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def read_json_or(path: Path, default: Any = None) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return default


def unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def trash(path: Path, tmp_dir: Path) -> None:
    """Make ``path`` (a file or a directory) disappear in one step, then remove it.

    It is renamed into ``tmp_dir`` (``<data>/tmp``, same filesystem) and the
    rename made durable before the slow removal: a reader sees the whole
    thing or nothing, and a crash leaves at most a ``.trash-*`` entry in tmp
    (swept at start-up by age).  Blocking: call in a thread.
    """
    path = Path(path)
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    dest = Path(tmp_dir) / f".trash-{path.name[:24]}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    os.rename(path, dest)
    fsync_dir(path.parent)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest, ignore_errors=True)
    else:
        unlink_quiet(dest)


def publish(tmp: Path, final: Path) -> bool:
    """Give the complete, fsynced ``tmp`` the name ``final`` unless that name exists; drop ``tmp``.

    ``os.link`` never replaces: for names that must never be overwritten (an
    id names its bytes; an image name is its capture time) EEXIST means the
    thing is already there, which is success for the caller.  Answers whether
    this call created ``final``.  Blocking: call in a thread.
    """
    try:
        os.link(tmp, final)
        created = True
    except FileExistsError:
        created = False
    finally:
        unlink_quiet(tmp)
    if created:
        fsync_dir(Path(final).parent)
    return created


_LOCK_DIRS: set[str] = set()  # lock directories known to exist (they are never removed while running)


class PathLock:
    """An in-process FIFO queue in front of a file lock on ``path``.

    ``filelock`` waits by polling (every 50 ms) with no queue, so many
    coroutines of one process contending for one lock starve each other under
    load.  Here they first queue on an ``asyncio.Lock`` per (event loop, path),
    so at most one coroutine per process polls the file lock, which other
    processes (a second daemon, ``storaged fsck``) still respect.
    """

    _local: dict[tuple[int, str], list] = {}  # (id(loop), path) -> [asyncio.Lock, users]

    def __init__(self, path: Path, timeout: float = -1) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._key: tuple[int, str] | None = None
        self._file: AsyncFileLock | None = None

    async def __aenter__(self) -> "PathLock":
        key = (id(asyncio.get_running_loop()), self.path)
        entry = self._local.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        self._key = key
        try:
            file_timeout = self.timeout
            if self.timeout < 0:
                await entry[0].acquire()
            else:
                # A bounded wait covers the queue too; the file lock gets what is left (never a
                # cancellation mid-acquire, which could leave it held).
                deadline = asyncio.get_running_loop().time() + self.timeout
                try:
                    async with asyncio.timeout(self.timeout):
                        await entry[0].acquire()
                except TimeoutError:
                    raise Timeout(self.path) from None
                file_timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                parent = os.path.dirname(self.path)
                if parent not in _LOCK_DIRS:
                    await asyncio.to_thread(os.makedirs, parent, exist_ok=True)
                    _LOCK_DIRS.add(parent)
                self._file = AsyncFileLock(self.path, timeout=file_timeout, preserve_lock_file=True)
                await self._file.acquire()
            except BaseException:
                entry[0].release()
                raise
        except BaseException:
            self._leave(entry)
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        entry = self._local[self._key]
        try:
            await self._file.release()
        finally:
            entry[0].release()
            self._leave(entry)

    def _leave(self, entry: list) -> None:
        entry[1] -= 1
        if entry[1] == 0:
            self._local.pop(self._key, None)


def async_lock(path: Path, timeout: float = -1) -> PathLock:
    """A fresh async lock on ``path``: in-process FIFO first, then the file lock.

    ``timeout`` (seconds, >= 0) bounds the whole wait; ``filelock.Timeout`` when it runs out."""
    return PathLock(path, timeout)


def sync_lock(path: Path, timeout: float = -1) -> FileLock:
    """A fresh blocking lock object, for code that already runs in a thread or a CLI."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout, preserve_lock_file=True)


class DirSync:
    """Group commit of a directory's fsync: one fsync covers every rename made before it began.

    A writer renames its file into place, then awaits ``sync()``.  If an fsync
    of the directory is already running, it may have started before this
    rename, so the writer waits for it and then for the next one; the next one
    is started by the first writer that finds none running, and covers every
    rename made until it starts.  So 16 concurrent creates pay for two or three
    directory fsyncs instead of 16, and none is answered before its own name is
    durable.  An fsync error reaches every writer that was waiting on it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._requested = 0  # renames announced so far
        self._durable = 0    # renames covered by a finished fsync
        self._running: tuple[asyncio.Future, int] | None = None  # the fsync under way, what it covers

    async def sync(self) -> None:
        self._requested += 1
        mine = self._requested
        while self._durable < mine:
            running = self._running
            if running is None or running[0].done():
                # covers: every rename announced until now, this one included.
                fsync = asyncio.ensure_future(asyncio.to_thread(fsync_dir, self.path))
                running = self._running = (fsync, self._requested)
            fsync, covers = running
            try:
                await asyncio.shield(fsync)
            except OSError:
                if covers >= mine:
                    raise
                continue  # an earlier batch's fsync failed; this writer's name needs one of its own
            finally:
                if self._running is running and fsync.done():
                    self._running = None
            self._durable = max(self._durable, covers)


class SharedExclusive:
    """Shared/exclusive locks by name, for one process (writers first, so they never starve).

    Many coroutines may hold a name shared at once; an exclusive holder holds
    it alone, and also takes the file lock ``path_of(name)`` so that other
    processes that use that file lock (a CLI repair) are excluded too.  Shared
    holders take no file lock: use this only where the daemon is the one
    process that takes the lock shared (it owns its data root).
    """

    def __init__(self, path_of) -> None:
        self._path_of = path_of
        self._state: dict[Any, list] = {}  # name -> [Condition, readers, writer, writers waiting, users]

    def _enter(self, name: Any) -> list:
        state = self._state.get(name)
        if state is None:
            state = self._state[name] = [asyncio.Condition(), 0, False, 0, 0]
        state[4] += 1
        return state

    def _leave(self, name: Any, state: list) -> None:
        state[4] -= 1
        if state[4] == 0:
            self._state.pop(name, None)

    def shared(self, name: Any) -> "_Held":
        return _Held(self, name, exclusive=False)

    def exclusive(self, name: Any) -> "_Held":
        return _Held(self, name, exclusive=True)


class _Held:
    def __init__(self, owner: SharedExclusive, name: Any, *, exclusive: bool) -> None:
        self.owner, self.name, self.exclusive = owner, name, exclusive
        self._file: PathLock | None = None

    async def __aenter__(self) -> "_Held":
        state = self.owner._enter(self.name)
        cond = state[0]
        try:
            async with cond:
                if self.exclusive:
                    state[3] += 1
                    try:
                        await cond.wait_for(lambda: not state[2] and state[1] == 0)
                    finally:
                        state[3] -= 1
                        cond.notify_all()
                    state[2] = True
                else:
                    await cond.wait_for(lambda: not state[2] and state[3] == 0)
                    state[1] += 1
        except BaseException:
            self.owner._leave(self.name, state)
            raise
        if self.exclusive:
            try:
                self._file = PathLock(self.owner._path_of(self.name))
                await self._file.__aenter__()
            except BaseException:
                await self._release(state)
                raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        state = self.owner._state[self.name]
        try:
            if self._file is not None:
                await self._file.__aexit__(*exc_info)
        finally:
            await self._release(state)

    async def _release(self, state: list) -> None:
        cond = state[0]
        async with cond:
            if self.exclusive:
                state[2] = False
            else:
                state[1] -= 1
            cond.notify_all()
        self.owner._leave(self.name, state)
