"""The one place that maps ids to paths.

Every id is checked against its pattern here before it becomes a path, so a
hostile id can never name anything outside its slot in the tree.

Layout of the data root::

    <data>/<id[:2]>/<id[2:]>/          a stored object (id = SHA-256 of its bytes)
        meta.json                      name, size, content type, created
        <safename.ext>                 the bytes
        the_file -> <safename.ext>     symlink, as the upload contract sketches
        analysis/<analysis_id>/        jobs on this object (see storaged.jobs)
    <data>/tmp/                        temp files of writes in flight (swept at start)
    <data>/locks/                      lock files (kept; see storaged.store.atomic)
    <data>/lost+found/<relative path>  damaged things set aside (by fsck --repair, self-healing dedupe)
    <data>/<family>/...                records of the other API families
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from storaged.errors import BadRequest

OBJECT_ID_RE = re.compile(r"^[0-9a-f]{64}$")
OBJECT_ID_SCHEMA = {"type": "string", "pattern": OBJECT_ID_RE.pattern,
                    "description": "file id: the SHA-256 of the bytes, 64 lowercase hex digits"}
# Directory names at the top of the data root that are not object fan-out dirs.
RESERVED_TOP = {"tmp", "locks", "lost+found"}


def check_object_id(object_id: str) -> str:
    if not isinstance(object_id, str) or not OBJECT_ID_RE.match(object_id):
        raise BadRequest("malformed file_id: expected 64 lowercase hex characters (SHA-256)")
    return object_id


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def object_dir(self, object_id: str) -> Path:
        check_object_id(object_id)
        return self.root / object_id[:2] / object_id[2:]

    def analyses_dir(self, object_id: str) -> Path:
        """Where the jobs on an object live (they go when the object goes)."""
        return self.object_dir(object_id) / "analysis"

    def object_lock(self, object_id: str) -> Path:
        check_object_id(object_id)
        return self.locks / "objects" / f"{object_id}.lock"

    def lock_for(self, kind: str, name: str) -> Path:
        """A lock file for any other thing (a record, a job, a stream)."""
        return self.locks / kind / f"{name}.lock"

    @property
    def cache(self) -> Path:
        """Start-up snapshots of the in-memory catalogues (storaged.store.snapshot): deletable at any time."""
        return self.root / "cache"

    @property
    def lost_found(self) -> Path:
        return self.root / "lost+found"

    def lost_found_for(self, path: Path) -> Path:
        """A free name for ``path`` under ``lost+found/`` (same relative path, ``.1``, ``.2``… when taken).

        Its parent directories are created; the caller moves or links ``path`` there.  Blocking."""
        dest = self.lost_found / os.path.relpath(path, self.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        final, n = dest, 0
        while os.path.lexists(final):
            n += 1
            final = dest.with_name(f"{dest.name}.{n}")
        return final

    def family_dir(self, family: str) -> Path:
        return self.root / family

    def ensure(self) -> None:
        for d in (self.root, self.tmp, self.locks, self.locks / "objects"):
            d.mkdir(parents=True, exist_ok=True)

    def fanout_dirs(self) -> list[str]:
        """The two-hex-digit directories objects fan out into, sorted.  Blocking."""
        try:
            tops = sorted(e.name for e in self.root.iterdir())
        except FileNotFoundError:
            return []
        return [top for top in tops if len(top) == 2 and top not in RESERVED_TOP]

    def object_ids_in(self, top: str) -> list[str]:
        """The object ids under one fan-out directory, sorted.  Blocking."""
        try:
            subs = sorted(e.name for e in (self.root / top).iterdir())
        except (NotADirectoryError, FileNotFoundError):
            return []
        return [top + sub for sub in subs if OBJECT_ID_RE.match(top + sub)]

    def object_ids(self):
        """Yield every stored object id, in id order.  Blocking: call in a thread."""
        for top in self.fanout_dirs():
            yield from self.object_ids_in(top)
