"""Run a command under the system-call sandbox a systemd unit asks for, without systemd.

    python tests/unit_sandbox.py systemd/storaged.service -- storaged serve ...

CI machines have no systemd as PID 1, so the unit cannot be started there; but the
parts of its hardening that could break ffmpeg, Python or the job workers are
seccomp filters, and those can be loaded by anyone.  This reads the unit's
``SystemCallFilter=`` lines (groups expanded by ``systemd-analyze syscall-filter``,
allow-list then ``~`` removals, as systemd applies them), ``SystemCallErrorNumber=``,
``MemoryDenyWriteExecute=`` (no mapping both writable and executable) and
``RestrictAddressFamilies=`` (``socket()`` only for the listed families), loads the
equivalent filter through libseccomp (it sets no_new_privs, as ``NoNewPrivileges=``
does) and execs the command.  Children inherit the filter, so every ffmpeg, ffprobe
and detached worker the daemon starts runs under it too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current: str | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif not line.startswith(" "):
            current = None  # e.g. the list of calls in no group
        elif current and not line.strip().startswith("#") and line.strip():
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def load_filter(unit: Path) -> None:
    settings = unit_settings(unit)
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    if not allowed:
        raise SystemExit(f"{unit}: no SystemCallFilter allow-list")
    code = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    no_wx = settings.get("MemoryDenyWriteExecute", ["false"])[-1].lower() in ("1", "yes", "true", "on")
    families = [getattr(socket, f) for f in " ".join(settings.get("RestrictAddressFamilies", [])).split()]

    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(code))
    assert ctx, "seccomp_init failed"

    def allow(name: str, *conditions: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call of this architecture / libseccomp
        array = (ArgCmp * len(conditions))(*[ArgCmp(*c) for c in conditions]) if conditions else None
        rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, len(conditions), array)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add({name})")

    conditional = set()
    if no_wx:
        conditional |= {"mmap", "mprotect", "pkey_mprotect"}
    if families:
        conditional.add("socket")
    for name in sorted(allowed - conditional):
        allow(name)
    for name in sorted(allowed & conditional):
        if name == "socket":
            for family in families:
                allow(name, (0, SCMP_CMP_EQ, int(family), 0))
        else:  # never writable and executable at once
            allow(name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
            allow(name, (2, SCMP_CMP_MASKED_EQ, PROT_WRITE, 0))
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


def main(argv: list[str]) -> int:
    unit, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit("usage: unit_sandbox.py UNIT -- COMMAND [ARGS...]")
    load_filter(Path(unit))
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
