"""Start-up snapshots of in-memory catalogues, checked against the tree before use.

Protocol
--------
*What.*  ``<data>/cache/<kind>.snapshot`` holds, for one directory of record
files ``<id>.json``, the rows a catalogue derived from them (marshal), the
directory's mtime in nanoseconds, and the wall-clock time the rows were true
at.  It lives outside the directory it describes, so writing it does not
change that directory's mtime.  It is a cache: deleting ``cache/`` only costs
a slower start.

*Written* atomically like every file (temp + fsync + rename), with the
directory's mtime and the time read *before* the rows: at a clean stop (no
write runs any more, so the memory equals the files) and after a start-up
build that had to read many files (before the daemon serves).  A write that
raced the build then only makes the next start read the changed files again.

*When it is trusted.*  At start-up the directory is listed.  If its mtime is
still the one in the snapshot, and that mtime was older than the snapshot by
more than a clock tick (a filesystem's timestamps are coarse: two writes
within one tick can leave the same mtime), no name in it was created,
replaced (every write renames) or removed since, and the rows are used as
they are.  A clean stop waits out that tick before it stamps.
Otherwise each file is stat'ed: rows of ids no longer listed are dropped, and
files unknown to the snapshot, or changed at or after the time it was true
(less two seconds of clock slack), are read again.  A snapshot of another
format, of another directory, or that cannot be read is ignored: every file
is read.

*What the directory cannot show.*  A file rewritten in place (opened and
truncated, not renamed) behind a stopped daemon's back leaves the directory
as it was.  Its own mtime moves, though: after a start that trusted an
unchanged directory, :func:`changed_since` stats every file in a background
thread (the daemon already serves) and the owner reads again, under the
record's lock, each file changed after the snapshot was true and before this
process started (later changes are the daemon's own writes).
"""

from __future__ import annotations

import logging
import marshal
import os
import time
from pathlib import Path
from typing import Any, Callable

from storaged.store.atomic import write_bytes

log = logging.getLogger("storaged.snapshot")

FORMAT = 1
SLACK_NS = 2_000_000_000
TICK_NS = 50_000_000  # longer than any filesystem timestamp granularity
Row = Any


def path_for(data_root: Path, kind: str) -> Path:
    return Path(data_root) / "cache" / f"{kind}.snapshot"  # Layout.cache


def record_ids(names: list[str]) -> list[int]:
    return [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit() and n[0] != "0"]


Stamp = tuple[int, int]  # (directory mtime ns, wall-clock ns) read before the rows


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


def load(snapshot: Path, directory: Path, version: str, read: Callable[[int], Row | None]
         ) -> tuple[dict[int, Row], int, str, Stamp | None]:
    """The rows of ``directory``: (rows, files read, how, the stamp they are true at).

    ``read(id)`` parses one file (None: leave it out).
    """
    true_at = stamp(directory)
    try:
        before = true_at[0] if true_at else os.stat(directory).st_mtime_ns
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}, 0, "empty", None
    ids = record_ids(names)
    saved = _read_snapshot(snapshot, directory, version)
    if saved is None:
        rows = {}
        for record_id in ids:
            row = read(record_id)
            if row is not None:
                rows[record_id] = row
        return rows, len(ids), "read every file", true_at
    rows, dir_mtime, saved_at = saved
    if dir_mtime == before and dir_mtime < saved_at - TICK_NS and len(ids) >= len(rows):
        listed = set(ids)
        if all(i in listed for i in rows):
            # Unchanged directory: the only files to read are those the snapshot left out (unreadable ones).
            missing = [i for i in ids if i not in rows]
            for record_id in missing:
                row = read(record_id)
                if row is not None:
                    rows[record_id] = row
            return rows, len(missing), "snapshot, directory unchanged", (dir_mtime, saved_at)
    listed = set(ids)
    for record_id in [i for i in rows if i not in listed]:
        del rows[record_id]
    cutoff = saved_at - SLACK_NS
    reread = 0
    for record_id in ids:
        if record_id in rows:
            try:
                if os.stat(directory / f"{record_id}.json").st_mtime_ns < cutoff:
                    continue
            except FileNotFoundError:
                del rows[record_id]
                continue
        reread += 1
        row = read(record_id)
        if row is None:
            rows.pop(record_id, None)
        else:
            rows[record_id] = row
    return rows, reread, "snapshot, changed files read again", true_at


def save(snapshot: Path, directory: Path, version: str, rows: dict[int, Row], true_at: Stamp | None) -> None:
    """Write the snapshot of ``rows``, true of the files as of ``true_at`` (blocking: call in a thread)."""
    if true_at is None:
        return
    dir_mtime, true_at = true_at
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    payload = marshal.dumps((FORMAT, version, str(directory), dir_mtime, true_at, rows))
    write_bytes(snapshot, payload)


def drop(snapshot: Path) -> None:
    try:
        os.unlink(snapshot)
    except FileNotFoundError:
        pass


def _read_snapshot(snapshot: Path, directory: Path, version: str) -> tuple[dict[int, Row], int, int] | None:
    try:
        with open(snapshot, "rb") as fh:
            fmt, ver, where, dir_mtime, true_at, rows = marshal.loads(fh.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, TypeError) as exc:
        log.warning("ignoring the unreadable snapshot %s: %s", snapshot, exc)
        return None
    if fmt != FORMAT or ver != version or where != str(directory) or not isinstance(rows, dict):
        return None
    return rows, dir_mtime, true_at


def changed_since(directory: Path, saved_at: int, started_at: int) -> list[int]:
    """Ids whose file changed after a snapshot was true (less the slack) and before ``started_at`` (blocking)."""
    cutoff = saved_at - SLACK_NS
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for record_id in record_ids(names):
        try:
            mtime = os.stat(directory / f"{record_id}.json").st_mtime_ns
        except FileNotFoundError:
            continue
        if cutoff <= mtime < started_at:
            out.append(record_id)
    return out


def verify(snapshot: Path) -> tuple[str, list[int]] | None:
    """For fsck: (the directory, ids of files changed in place since) if the next start would trust
    ``snapshot`` although files changed behind it; ("", []) for an unreadable snapshot; None if sound."""
    try:
        with open(snapshot, "rb") as fh:
            fmt, _ver, where, dir_mtime, saved_at, _rows = marshal.loads(fh.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, TypeError):
        return "", []
    if fmt != FORMAT:
        return "", []
    directory = Path(where)
    try:
        if os.stat(directory).st_mtime_ns != dir_mtime:
            return None  # the next start reads the changed files again by itself
    except FileNotFoundError:
        return None
    changed = []
    for record_id in record_ids(os.listdir(directory)):
        try:
            if os.stat(directory / f"{record_id}.json").st_mtime_ns > saved_at:
                changed.append(record_id)
        except FileNotFoundError:
            continue
    return (str(directory), changed) if changed else None
