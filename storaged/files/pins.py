"""Pins: objects the janitor never deletes.

Protocol
--------
A pinned object has a file ``pinned`` (JSON ``{"pinned": <ISO time>}``) in its
object directory ``<data>/<id[:2]>/<id[2:]>/``.  The pin lives and dies with
the object: deleting the object removes it, and bytes uploaded again after a
delete start unpinned.  Pin and unpin hold the object's lock
(``locks/objects/<id>.lock``), the same lock the object store's commit and
delete take, so a pin can never land in a directory being deleted.  The
janitor reads the file without a lock and checks again under the object's
lock right before it deletes, so a pin that wins the race is honoured.

*What a crash leaves.*  The pin is written atomically: it is there or not.
"""

from __future__ import annotations

import os
from pathlib import Path

from storaged.errors import NotFound
from storaged.store.atomic import fsync_dir, sync_lock, unlink_quiet, write_json
from storaged.store.layout import Layout, check_object_id
from storaged.store.objects import META, now_iso

PIN = "pinned"


def is_pinned(layout: Layout, oid: str) -> bool:
    return os.path.exists(layout.object_dir(oid) / PIN)


def _require(obj: Path, oid: str) -> None:
    if not (obj / META).exists():
        raise NotFound(f"file not found: {oid}")


def pin_blocking(layout: Layout, oid: str, pinned: bool) -> bool:
    """Pin or unpin ``oid`` under its lock; answers the new state.  Blocking: call in a thread."""
    check_object_id(oid)
    obj = layout.object_dir(oid)
    with sync_lock(layout.object_lock(oid)):
        _require(obj, oid)
        if pinned:
            write_json(obj / PIN, {"pinned": now_iso()})
        elif (obj / PIN).exists():
            unlink_quiet(obj / PIN)
            fsync_dir(obj)
    return pinned


def pinned_path(path: Path) -> bool:
    """Whether the object directory ``path`` holds a pin."""
    return os.path.exists(Path(path) / PIN)
