"""What the tier replicates, asked from each family.

Stored objects are the tier's own :class:`ObjectSource`.  Everything else
comes from the families' providers (``Provider.replicable``: each lists its
own complete files), wrapped as :class:`TreeFiles` by :func:`sources_from`.
A source names *items* (an object, a record file...); for one item it lists
the :class:`Upload` s that make it up and where the item's remote state is
recorded.  The tier never parses a family's files; it only moves bytes and
records what the engine verified.

``scope`` of an upload: ``shared`` keys are content-addressed (the same bytes
get the same key on every box, so boxes sharing a bucket dedupe and never
write different bytes under one key); ``box`` keys live under
``<prefix>boxes/<box>/`` (a box's own meta and records: boxes never write each
other's).
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from storaged.store.atomic import read_json, read_json_or
from storaged.store.layout import OBJECT_ID_RE, Layout
from storaged.store.objects import META
from storaged.provider import Provider

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
    extra: dict = field(default_factory=dict)  # kept in the record (e.g. the version of the file sent)

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


# -- a box's own files: records, recordings, camera images, exports, finished analyses ---------

_SAFE_REL = re.compile(r"[A-Za-z0-9._~+-]+(/[A-Za-z0-9._~+-]+)*")


class TreeFiles:
    """A family's own files, each its own item under the box's keys.

    Their remote state is recorded in ``<data>/tier/remote/<path>.json`` with the
    size and mtime the file had: a record rewritten since (a PUT on a session) is
    sent again; the bucket keeps the last version sent (deletions are not sent).
    """

    def __init__(self, family: str, walk) -> None:
        self.family = family
        self.walk = walk

    @staticmethod
    def ledger(layout: Layout, rel: str) -> Path:
        return layout.root / "tier" / "remote" / f"{rel}.json"

    def pending(self, layout: Layout) -> Iterator[str]:
        for rel in self.walk(layout.root):
            if not _SAFE_REL.fullmatch(rel) or ".." in rel.split("/"):
                continue
            try:
                st = os.stat(layout.root / rel)
            except OSError:
                continue
            done = read_json_or(self.ledger(layout, rel), None)
            if not isinstance(done, dict) or done.get("version") != [st.st_size, st.st_mtime_ns]:
                yield quote(rel, safe="")

    def item(self, layout: Layout, ident: str) -> Item | None:
        rel = unquote(ident)
        if not _SAFE_REL.fullmatch(rel) or ".." in rel.split("/"):
            return None
        path = layout.root / rel
        try:
            st = os.stat(path)
        except OSError:
            return None
        ledger = self.ledger(layout, rel)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        return Item(self.family, ident, [Upload(rel, path, "box", st.st_size)], ledger,
                    {"version": [st.st_size, st.st_mtime_ns]})


def sources_from(providers) -> list[TierSource]:
    """The tier's sources: the object store's own, and each family's complete files as its
    provider lists them (``Provider.replicable``); the tier walks no family's directories itself."""
    out: list[TierSource] = [ObjectSource()]
    for provider in providers:
        if type(provider).replicable is not Provider.replicable:
            out.append(TreeFiles(provider.name, provider.replicable))
    return out
