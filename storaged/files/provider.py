"""The files family's answers to retention, fsck and metrics: stored objects (uploads, clips).

An object is ``<data>/<id[:2]>/<id[2:]>/`` (see storaged.store.layout).  It
may be deleted by retention only when it is neither pinned nor referenced
(by a record of any family or a queued/running job's declared inputs).
The delete holds the object's lock (``locks/objects/<id>.lock``, taken
without waiting: a busy object is being written, pinned or deleted and is
skipped this pass) and looks again under it at the pin and at the job
queue's declared inputs (POST /analyse submits under that same lock).  A
record that starts pointing at the object after the pass read references
is not seen until the next pass: references are read once per pass.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from storaged.config import Config
from storaged.files.pins import PIN
from storaged.jobs.queue import active_inputs
from storaged.provider import KEPT, Item, Kind, Provider, Sample, Scan
from storaged.store.atomic import sync_lock
from storaged.store.layout import Layout
from storaged.store.objects import META, ObjectStore
from storaged.store.tree import tree_size


class FilesProvider(Provider):
    name = "files"

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.config = config
        self.kinds = (Kind("uploads", "retention_uploads", 2, self.items, self.delete, KEPT,
                           "stored objects (uploads, clips), unless pinned or referenced"),)

    def items(self, scan: Scan) -> Iterator[Item]:
        for oid in self.layout.object_ids():
            od = self.layout.object_dir(oid)
            if not scan.usage and (scan.refs.who(oid) or os.path.exists(od / PIN)):
                continue
            try:
                mtime = os.stat(od / META).st_mtime
            except FileNotFoundError:
                continue
            size, files = tree_size(od)
            if scan.usage:
                # Jobs on the object are counted by the analyses family.
                a_size, a_files = tree_size(self.layout.analyses_dir(oid))
                size, files = size - a_size, files - a_files
            yield Item("uploads", od, scan.rel(od), mtime, size, files, {"object": oid}, object_id=oid)

    def delete(self, scan: Scan, item: Item) -> bool:
        oid = item.extra["object"]
        with sync_lock(self.layout.object_lock(oid), timeout=0):
            od = self.layout.object_dir(oid)
            if not od.is_dir() or (od / PIN).exists():
                return False
            if any(used == oid for used, _who in active_inputs(self.layout)):
                return False
            ObjectStore(self.layout, max_size=self.config.max_upload_size).delete_blocking(oid)
        return True

    def usage(self, scan: Scan) -> Iterable[Sample]:
        objects = pinned = 0
        for oid in self.layout.object_ids():
            objects += 1
            pinned += os.path.exists(self.layout.object_dir(oid) / PIN)
        yield Sample("storaged_objects", "Stored objects (cached walk).", objects)
        yield Sample("storaged_objects_pinned", "Pinned objects (cached walk).", pinned)
