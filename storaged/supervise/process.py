"""Process supervision, one copy for every family: identity, the stop sequence, groups, backoff.

*Identity.*  A pid alone is not an identity: after a reboot or a long uptime
the same pid names another process.  An ``inrun.pid`` file therefore records
the pid, the kernel's boot id and the process start time (clock ticks since
boot, from /proc/<pid>/stat); a process is "the same" only when all three
match.  :func:`proc_stat` is the one reader of /proc/<pid>/stat.

*The stop sequence.*  A process is asked to end politely first and forced
last: each step (``q`` on ffmpeg's stdin, SIGINT, SIGTERM, SIGKILL, as the
caller's process needs) is followed by a bounded wait for the process to be
gone; the sequence ends at the first wait that sees it gone.  One
implementation, :func:`stop_sequence` (async) / :func:`stop_sequence_blocking`
(threads), serves ffmpeg runs, the camera capture, the segmenter and job
process groups (:func:`terminate_group`).

*Groups.*  Workers and segmenters lead their own session, so a signal to the
group reaches their ffmpeg too; :func:`wait_group_gone` waits until no live
member is left (KILL after a timeout).

*Helpers that end with the daemon.*  Workers and segmenters outlive a
SIGKILLed daemon on purpose (the next start adopts them); a helper whose
only reader is the daemon (the snapshot check) must not.  It calls
:func:`die_with_parent` first: the kernel sends it SIGKILL when its parent
dies, and a parent already gone before that call ends it at once.

*Restart with backoff* is storaged.supervise.backoff.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from storaged.store.atomic import read_json, write_json

_BOOT_ID: str | None = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            _BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _BOOT_ID = "unknown"
    return _BOOT_ID


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (``[0]`` is the state, ``[2]`` the
    process group, ``[19]`` the start time); None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when there is no such process."""
    fields = proc_stat(pid)
    if fields is None or fields[0] == "Z":  # a zombie has finished its work
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    boot_id: str
    start_ticks: int
    started: float = 0.0

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity | None":
        ticks = start_ticks(pid)
        if ticks is None:
            return None
        return cls(pid=pid, boot_id=boot_id(), start_ticks=ticks, started=time.time())

    def alive(self) -> bool:
        return self.boot_id == boot_id() and start_ticks(self.pid) == self.start_ticks

    def signal_group(self, sig: int) -> bool:
        """Signal the process group this process leads (workers run in their own session)."""
        if not self.alive():
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "ProcessIdentity | None":
        try:
            return cls(pid=int(data["pid"]), boot_id=str(data["boot_id"]),
                       start_ticks=int(data["start_ticks"]), started=float(data.get("started", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when this process's parent dies; exit now if ``parent_pid`` (the
    parent as it was when it started us) is already gone, since the request would then never fire."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the helper ends when it has finished, as before
    if os.getppid() != parent_pid:
        os._exit(1)


def write_pidfile(path: Path, identity: ProcessIdentity) -> None:
    write_json(path, identity.to_json())


def read_pidfile(path: Path) -> ProcessIdentity | None:
    try:
        return ProcessIdentity.from_json(read_json(path))
    except (FileNotFoundError, ValueError):
        return None


# -- the stop sequence -----------------------------------------------------------------

Step = tuple[Callable[[], Any], float]  # (what to do, how long to wait for the process to be gone)
_GONE_ERRORS = (ProcessLookupError, BrokenPipeError, ConnectionResetError, RuntimeError, OSError, ValueError)


async def stop_sequence(steps: Sequence[Step], gone: Callable[[float], Awaitable[bool]]) -> bool:
    """Run ``steps`` in order until ``gone(wait)`` sees the process gone; True when it is."""
    for action, wait in steps:
        try:
            action()
        except _GONE_ERRORS:
            pass  # already gone, or its stdin closed: the wait tells
        if await gone(wait):
            return True
    return False


def stop_sequence_blocking(steps: Sequence[Step], alive: Callable[[], bool], poll: float = 0.05) -> bool:
    """:func:`stop_sequence` for threads and command-line tools, polling ``alive``."""
    for action, wait in steps:
        try:
            action()
        except _GONE_ERRORS:
            pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(poll)
        if not alive():
            return True
    return False


async def poll_gone(alive: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Wait up to ``timeout`` for ``alive()`` to turn false (for processes we cannot ``wait()`` on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while alive():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def terminate_group(identity: ProcessIdentity, timeout: float = 5.0) -> None:
    """TERM the group, wait up to ``timeout``, then KILL (and wait up to 5 s).  Blocking: call in a thread."""
    if not identity.alive():
        return
    stop_sequence_blocking([(lambda: identity.signal_group(signal.SIGTERM), timeout),
                            (lambda: identity.signal_group(signal.SIGKILL), 5.0)], identity.alive)


# -- process groups ----------------------------------------------------------------------

def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        fields = proc_stat(name)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(name))
    return out


def wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """Wait until process group ``pgid`` is empty; KILL what is left after ``timeout``.  Blocking."""
    def kill() -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return stop_sequence_blocking([(lambda: None, timeout), (kill, 0.1)], lambda: bool(group_members(pgid)))
