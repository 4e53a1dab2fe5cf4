"""What the tier replicates, asked from each family.

A family that has something for the tier registers a :class:`TierSource`:
it walks its own part of the tree and names *items* (an object, a record
file...); for one item it lists the :class:`Upload` s that make it up and
where the item's remote state is recorded.  The tier never parses a family's
files; it only moves bytes and records what the engine verified.

``scope`` of an upload: ``shared`` keys are content-addressed (the same bytes
get the same key on every box, so boxes sharing a bucket dedupe and never
write different bytes under one key); ``box`` keys live under
``<prefix>boxes/<box>/`` (a box's own meta and records: boxes never write each
other's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from storaged.store.atomic import read_json, read_json_or
from storaged.store.layout import OBJECT_ID_RE, Layout
from storaged.store.objects import META

REMOTE = "remote.json"


@dataclass(frozen=True)
class Upload:
    rel: str                 # path in the tree, relative to the data root (and to the prefix or box in keys)
    path: Path               # the file to send
    scope: str               # "shared" (content-addressed) or "box"
    size: int
    sha256: str | None = None   # known up front for content-addressed bytes; else computed while sending
    content_type: str = ""


@dataclass
class Item:
    family: str
    ident: str               # unique within the family, safe as a file name
    uploads: list[Upload] = field(default_factory=list)
    record: Path | None = None   # where remote.json is written once every upload is verified

    @property
    def size(self) -> int:
        return sum(u.size for u in self.uploads)


class TierSource(Protocol):
    family: str

    def pending(self, layout: Layout) -> Iterator[str]:
        """Idents of items not yet verified remote (blocking: a directory walk)."""

    def item(self, layout: Layout, ident: str) -> Item | None:
        """The item as it is now; None when it is gone (deleted meanwhile)."""


class ObjectSource:
    """Content-addressed objects: their bytes (shared key ``<ab>/<cdef…>/the_file``) and meta.json (box key)."""

    family = "objects"

    def pending(self, layout: Layout) -> Iterator[str]:
        for oid in layout.object_ids():
            od = layout.object_dir(oid)
            if os.path.exists(od / META) and not os.path.exists(od / REMOTE):
                yield oid

    def item(self, layout: Layout, ident: str) -> Item | None:
        if not OBJECT_ID_RE.match(ident):
            return None
        od = layout.object_dir(ident)
        try:
            meta = read_json(od / META)
            data = od / meta["stored_name"]
            size = os.stat(data).st_size
            meta_size = os.stat(od / META).st_size
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return None
        rel = f"{ident[:2]}/{ident[2:]}"
        return Item(self.family, ident, [
            Upload(f"{rel}/the_file", data, "shared", size, ident, meta.get("content_type", "")),
            Upload(f"{rel}/{META}", od / META, "box", meta_size, None, "application/json"),
        ], od / REMOTE)


def remote_state(layout: Layout, oid: str) -> dict | None:
    """An object's remote.json (what the engine verified), or None."""
    state = read_json_or(layout.object_dir(oid) / REMOTE, None)
    return state if isinstance(state, dict) else None


SOURCES: list[TierSource] = [ObjectSource()]
