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

*What a crash leaves.*  At worst a stray ``*.tmp`` file (swept at start-up by
age, reported by ``fsck``); never a partial file under a final name.

*Locks.*  One lock file per thing (object, record, job, stream) under
``<data>/locks/``; lock files are never unlinked while the daemon runs
(unlinking a lock file someone waits on would let two holders in).  Every
critical section creates a *new* lock object: a shared ``filelock`` instance
is re-entrant and would exclude nothing between coroutines of one process.
Waiting happens in a worker thread (``run_in_executor``), never on the event
loop.  Writers of the same thing wait for each other; readers never wait.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

from filelock import AsyncFileLock, FileLock

from storaged.errors import InsufficientStorage

TMP_SUFFIX = ".tmp"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raise_if_disk_full(exc: OSError) -> None:
    if exc.errno in DISK_FULL_ERRNOS:
        raise InsufficientStorage("insufficient storage: the data filesystem is full") from exc


def write_bytes(final: Path, data: bytes, *, durable: bool = True) -> None:
    """Atomically replace ``final`` with ``data``.  Blocking: call in a thread."""
    final = Path(final)
    tmp = temp_name(final)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.rename(tmp, final)
    except OSError as exc:
        unlink_quiet(tmp)
        raise_if_disk_full(exc)
        raise
    except BaseException:
        unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(final.parent)


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


def async_lock(path: Path, timeout: float = -1) -> AsyncFileLock:
    """A fresh async lock object on ``path`` (its directory is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return AsyncFileLock(str(path), timeout=timeout, preserve_lock_file=True)


def sync_lock(path: Path, timeout: float = -1) -> FileLock:
    """A fresh blocking lock object, for code that already runs in a thread or a CLI."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout, preserve_lock_file=True)
