"""One owner per data root: ``<data>/locks/daemon.lock``.

Protocol
--------
``storaged serve`` takes an exclusive ``flock`` on ``<data>/locks/daemon.lock``
before it touches anything else in the root, writes its pid into the file,
and holds the lock until it exits; the kernel drops the lock when the
process dies, however it dies.  The file is kept (never unlinked: a second
daemon waiting on an unlinked file would lock a name nobody else sees).
A second ``serve`` on the same root fails at once, naming the holder's pid.
The descriptor is close-on-exec, so neither ffmpeg nor a job worker (which
may outlive the daemon) ever holds it.

``storaged fsck`` and ``storaged gc`` never take this lock: they use the
per-thing locks the daemon uses (see storaged.store.atomic) and are safe
beside a live daemon.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "daemon.lock"


class DataRootBusy(RuntimeError):
    def __init__(self, root: Path, holder: str) -> None:
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"{root} is already served by {who} (it holds {Path(root) / 'locks' / LOCK_NAME}); "
                         "stop it first, or give this daemon another --data-dir")


def acquire(root: Path) -> int:
    """Take the owner lock of ``root``; answers the descriptor to keep open.  Raises DataRootBusy."""
    path = Path(root) / "locks" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # The lock is held through a read-only descriptor: a file kept open for writing would stop the
    # filesystem from being remounted read-only.  The pid is written through a short-lived one.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DataRootBusy(Path(root), holder) from None
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    os.close(fd)
