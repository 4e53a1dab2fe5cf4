"""Process identity that survives daemon restarts: pid + boot id + start time.

A pid alone is not an identity: after a reboot or a long uptime the same pid
names another process.  An ``inrun.pid`` file therefore records the pid, the
kernel's boot id and the process start time (clock ticks since boot, from
/proc/<pid>/stat); a process is "the same" only when all three match.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has finished its work
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


def write_pidfile(path: Path, identity: ProcessIdentity) -> None:
    write_json(path, identity.to_json())


def read_pidfile(path: Path) -> ProcessIdentity | None:
    try:
        return ProcessIdentity.from_json(read_json(path))
    except (FileNotFoundError, ValueError):
        return None


def terminate_group(identity: ProcessIdentity, timeout: float = 5.0) -> None:
    """TERM the group, wait up to ``timeout``, then KILL.  Blocking: call in a thread."""
    if not identity.signal_group(signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not identity.alive():
            return
        time.sleep(0.05)
    identity.signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while identity.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
