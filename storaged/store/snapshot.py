"""Start-up snapshots of in-memory catalogues, checked against the tree before use.

Protocol
--------
*What.*  ``<data>/cache/<kind>.snapshot`` holds, for one directory of record
files ``<id>.json``, the table a catalogue derived from them, the
directory's mtime in nanoseconds, and the wall-clock time the rows were true
at.  Layout: ``MAGIC``, the header's length (8 bytes, little-endian), the
header (marshal: format, version, directory, mtime, time, the owner's meta,
and name/typecode/length of each column), then each column's bytes as
``array.tobytes`` wrote them (native byte order: a cache of this machine),
so loading a million rows is a few ``frombytes``, not a million objects.
A bytes column (the records' JSON, most of the file) starts at a page
boundary and is mapped read-only rather than read: start-up does not copy
it, and its pages are the page cache's, which the kernel may drop and read
again, not the daemon's own memory.  A snapshot is only ever replaced by a
rename or removed, both of which leave a mapped file whole; a snapshot
truncated in place by hand under a running daemon would crash it (as it
would any program mapping the file).  It lives outside the directory it describes, so writing it does not
change that directory's mtime.  It is a cache: deleting ``cache/`` only costs
a slower start.

*Written* atomically like every file (temp + fsync + rename), with the
directory's mtime and the time read *before* the rows: at a clean stop (no
write runs any more, so the memory equals the files) and after a start-up
build that had to read many files (before the daemon serves).  A write that
raced the build then only makes the next start read the changed files again.

*When it is trusted.*  At start-up the directory is stat'ed, not listed.  If
its mtime is still the one in the snapshot, and that mtime was older than the snapshot by
more than a clock tick (a filesystem's timestamps are coarse: two writes
within one tick can leave the same mtime), no name in it was created,
replaced (every write renames) or removed since, and the rows are used as
they are, with the files the snapshot left out as unreadable (its owner's
meta names them), without listing a million names.  A clean stop waits out that tick before it stamps.
Otherwise the directory is listed and each file stat'ed (:func:`differences`): rows of ids no longer listed are dropped, and
files unknown to the snapshot, or changed at or after the time it was true
(less two seconds of clock slack), are read again.  A snapshot of another
format, of another directory, or that cannot be read is ignored: every file
is read.

*What the directory cannot show.*  A file rewritten in place (opened and
truncated, not renamed) behind a stopped daemon's back leaves the directory
as it was.  Its own mtime moves, though: after a start that trusted an
unchanged directory, :func:`differences` lists the directory and stats every
file in the background (the daemon already serves), in a child process at a
lower CPU priority so that a million stats do not hold the daemon's GIL
(:func:`differences_apart`; a thread if the child cannot answer; the child dies
with the daemon), and the owner reads
again, under the record's lock, each file changed after the snapshot was
true and before this process started (later changes are the daemon's own
writes), each file it does not hold and each row whose file is gone (a
directory mtime set back by hand).  Until that verification ends (seconds
at a million records) a reader sees the rows as of the clean stop for a
file edited in place behind the stopped daemon; every name created,
replaced or removed is already seen, since those change the directory.
``storaged fsck`` reports a snapshot the next start would trust although
the tree differs from it.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import mmap
import os
import subprocess
import sys
import time
from array import array
from bisect import bisect_left
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from storaged.store.atomic import write_bytes
from storaged.supervise.ffmpeg import stop_process
from storaged.supervise.process import die_with_parent

log = logging.getLogger("storaged.snapshot")

FORMAT = 2
MAGIC = b"storaged-snapshot\n"
SLACK_NS = 2_000_000_000
TICK_NS = 50_000_000  # longer than any filesystem timestamp granularity
_HEADER_MAX = 1 << 26
MAPPED = "B@"  # the typecode of a bytes column that starts at a page boundary and is mapped, not read
_PAGE = mmap.ALLOCATIONGRANULARITY


def path_for(data_root: Path, kind: str) -> Path:
    return Path(data_root) / "cache" / f"{kind}.snapshot"  # Layout.cache


def record_ids(names: Iterable[str]) -> list[int]:
    return [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit() and n[0] != "0"]


Stamp = tuple[int, int]  # (directory mtime ns, wall-clock ns) read before the rows


class Saved(NamedTuple):
    meta: Any
    columns: dict[str, Any]  # name -> array (or bytes: mmap for typecode MAPPED, bytes for "B*")
    dir_mtime: int
    saved_at: int  # wall-clock ns the rows were true at


def stamp(directory: Path) -> Stamp | None:
    try:
        return os.stat(directory).st_mtime_ns, time.time_ns()
    except FileNotFoundError:
        return None


def quiet_stamp(directory: Path) -> Stamp | None:
    """A stamp whose directory mtime is more than a tick old (at a clean stop: nothing writes any more)."""
    for _ in range(3):
        now = stamp(directory)
        if now is None or now[0] < now[1] - TICK_NS:
            return now
        time.sleep(TICK_NS / 1e9 + 0.01)
    return now


def trusted(saved: Saved, now: Stamp | None) -> bool:
    """Whether no name in the directory was created, replaced or removed since ``saved`` was true."""
    return now is not None and saved.dir_mtime == now[0] and saved.dir_mtime < saved.saved_at - TICK_NS


def save(snapshot: Path, directory: Path, version: str, true_at: Stamp | None, meta: Any,
         columns: dict[str, Any]) -> None:
    """Write a snapshot of ``columns`` (arrays, or bytes), true of the files as of ``true_at``.

    Blocking: call in a thread.
    """
    if true_at is None:
        return
    dir_mtime, saved_at = true_at
    table = [(name, MAPPED if _is_bytes(col) else col.typecode,
              len(col) if _is_bytes(col) else len(col) * col.itemsize)
             for name, col in columns.items()]
    header = marshal.dumps((FORMAT, sys.byteorder, version, str(directory), dir_mtime, saved_at, meta, table))
    parts: list = [MAGIC, len(header).to_bytes(8, "little"), header]
    at = sum(map(len, parts))
    for col in columns.values():
        if _is_bytes(col):
            parts.append(bytes(-at % _PAGE))
            at += -at % _PAGE
        part = col if _is_bytes(col) else memoryview(col).cast("B")
        parts.append(part)
        at += len(part)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(snapshot, parts)


def _is_bytes(col: Any) -> bool:
    return isinstance(col, (bytes, bytearray, mmap.mmap))


def drop(snapshot: Path) -> None:
    try:
        os.unlink(snapshot)
    except FileNotFoundError:
        pass


def _header(fh) -> tuple:
    if fh.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot of this format")
    size = int.from_bytes(fh.read(8), "little")
    if not 0 < size < _HEADER_MAX:
        raise ValueError("a header of impossible length")
    head = marshal.loads(fh.read(size))
    if not isinstance(head, tuple) or len(head) != 8 or head[0] != FORMAT or head[1] != sys.byteorder:
        raise ValueError("not a snapshot of this format")
    return head


def read(snapshot: Path, directory: Path, version: str, only: tuple[str, ...] | None = None) -> Saved | None:
    """The snapshot of ``directory`` (None: none, another's, or unreadable; blocking).

    ``only`` reads just those columns.  A bytes column comes back as a read-only ``mmap`` (see the
    protocol), which slices to ``bytes`` and searches like them.
    """
    try:
        with open(snapshot, "rb") as fh:
            _f, _o, ver, where, dir_mtime, saved_at, meta, table = _header(fh)
            if ver != version or where != str(directory):
                return None
            columns: dict[str, Any] = {}
            for name, typecode, size in table:
                if typecode == MAPPED:
                    at = fh.tell()
                    fh.seek(-at % _PAGE, os.SEEK_CUR)
                    if only is not None and name not in only:
                        fh.seek(size, os.SEEK_CUR)
                        continue
                    at = fh.tell()
                    if at + size > os.fstat(fh.fileno()).st_size:
                        raise ValueError(f"column {name} cut short")
                    # An empty column cannot be mapped (and needs no memory).
                    columns[name] = mmap.mmap(fh.fileno(), size, offset=at, access=mmap.ACCESS_READ) if size else b""
                    fh.seek(size, os.SEEK_CUR)
                    continue
                if only is not None and name not in only:
                    fh.seek(size, os.SEEK_CUR)
                    continue
                data = fh.read(size)
                if len(data) != size:
                    raise ValueError(f"column {name} cut short")
                if typecode == "B*":
                    columns[name] = data
                else:
                    col = array(typecode)
                    col.frombytes(data)
                    columns[name] = col
                del data
            if fh.read(1):
                raise ValueError("bytes after the last column")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, TypeError) as exc:
        log.warning("ignoring the unreadable snapshot %s: %s", snapshot, exc)
        return None
    return Saved(meta, columns, dir_mtime, saved_at)


def differences(directory: Path, cutoff: int, until: int | None, known: Callable[[int], bool],
                held: Callable[[], Iterable[int]], held_count: int) -> list[int]:
    """Ids where the files and a catalogue may differ (blocking: a worker thread).

    Files the catalogue does not know, files changed at or after ``cutoff``
    (and before ``until``, when given), and ids the catalogue holds
    (``held``: ``held_count`` of them) whose file is not listed.  The caller
    reads each again under its lock: this is a list of suspects, and a write
    racing the listing only adds a suspect that turns out unchanged.
    """
    out = []
    listed_known = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        entries = None
    names: set[int] | None = None
    if entries is not None:
        with entries:
            for entry in entries:
                name = entry.name
                if not (name.endswith(".json") and name[:-5].isdigit() and name[0] != "0"):
                    continue
                record_id = int(name[:-5])
                if not known(record_id):
                    out.append(record_id)
                    continue
                listed_known += 1
                try:
                    mtime = entry.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                if mtime >= cutoff and (until is None or mtime < until):
                    out.append(record_id)
    if listed_known != held_count:  # a held row without a file (rare: list the names once more)
        try:
            names = set(record_ids(os.listdir(directory)))
        except FileNotFoundError:
            names = set()
        out.extend(record_id for record_id in held() if record_id not in names)
    return sorted(set(out))


async def differences_apart(snapshot: Path, directory: Path, version: str, saved_at: int, cutoff: int,
                            until: int | None) -> list[int] | None:
    """:func:`differences` between ``directory`` and the ids ``snapshot`` holds, worked out by a child
    process at a lower CPU priority: a million entries listed and stat'ed by Python would otherwise hold
    this process's GIL for seconds beside its first requests.  None when the child could not answer
    (another snapshot there now, or no child at all): the caller does the same in a thread."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "storaged.store.snapshot", str(os.getpid()), str(snapshot), str(directory),
            version, str(saved_at), str(cutoff), "" if until is None else str(until),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        log.warning("checking %s in a child process failed (%s); checking in a thread", directory, exc)
        return None
    try:
        out, err = await proc.communicate()
    except BaseException:
        await stop_process(proc, send_q=False)
        raise
    if proc.returncode != 0:
        if proc.returncode != _ANOTHER:
            log.warning("checking %s in a child process failed (exit %s: %s); checking in a thread", directory,
                        proc.returncode, err.decode(errors="replace").strip()[-500:])
        return None
    ids = array("q")
    ids.frombytes(out)
    return list(ids)


_ANOTHER = 3  # the child's exit status when the snapshot is not the one the caller loaded


def _differences_main(argv: list[str]) -> int:
    parent, path, directory, version, saved_at, cutoff, until = argv
    die_with_parent(int(parent))  # only the daemon reads the answer: a SIGKILLed daemon ends the check
    os.nice(10)  # the daemon's requests first
    saved = read(Path(path), Path(directory), version, only=("ids",))
    if saved is None or saved.saved_at != int(saved_at) or "ids" not in saved.columns:
        return _ANOTHER
    ids = saved.columns["ids"]
    damaged = set(saved.meta.get("damaged", {})) if isinstance(saved.meta, dict) else set()

    def known(record_id: int) -> bool:
        p = bisect_left(ids, record_id)
        return (p < len(ids) and ids[p] == record_id) or record_id in damaged

    found = differences(Path(directory), int(cutoff), int(until) if until else None, known,
                        lambda: [*ids, *damaged], len(ids) + len(damaged))
    sys.stdout.buffer.write(array("q", found).tobytes())
    return 0


def verify(snapshot: Path) -> tuple[str, list[int]] | None:
    """For fsck: (the directory, ids where the tree differs) if the next start would trust
    ``snapshot`` although the tree differs from it; ("", []) for an unreadable snapshot; None if sound."""
    try:
        with open(snapshot, "rb") as fh:
            _f, _o, ver, where, dir_mtime, saved_at, meta, _table = _header(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, TypeError):
        return "", []
    directory = Path(where)
    try:
        if os.stat(directory).st_mtime_ns != dir_mtime or dir_mtime >= saved_at - TICK_NS:
            return None  # the next start lists the directory and reads the changed files by itself
    except FileNotFoundError:
        return None
    saved = read(snapshot, directory, ver, only=("ids",))
    if saved is None or "ids" not in saved.columns:
        return "", []
    held = set(saved.columns["ids"])
    if isinstance(meta, dict):
        held.update(meta.get("damaged", {}))
    found = differences(directory, saved_at, None, held.__contains__, lambda: held, len(held))
    return (str(directory), found) if found else None


if __name__ == "__main__":
    raise SystemExit(_differences_main(sys.argv[1:]))
