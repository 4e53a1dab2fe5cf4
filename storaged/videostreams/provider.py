"""The videostreams family's answers: a videostream whose ``stream_url`` is a stored object keeps it.

Records are ``<data>/videostreams/<id>.json`` (see storaged.videostreams.service);
a ``stream_url`` that is a ``/download/<id>`` link (relative or absolute)
references that object, so retention keeps it while the record exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from storaged.config import Config
from storaged.provider import Provider, Scan, record_files
from storaged.store.layout import Layout
from storaged.store.objects import linked_object
from storaged.store.records import RecordStore
from storaged.videostreams.service import KIND

if TYPE_CHECKING:
    from storaged.videostreams.service import VideostreamCatalogue


class VideostreamsProvider(Provider):
    name = "videostreams"
    top_dirs = (KIND,)

    def __init__(self, layout: Layout, config: Config) -> None:
        self.records = RecordStore(layout, KIND, ids="random53")
        self.catalogue: VideostreamCatalogue | None = None  # the running daemon's (its setup sets it)

    async def ready(self) -> None:
        if self.catalogue is not None:
            await self.catalogue.settled.wait()

    def replicable(self, root: Path) -> Iterator[str]:
        return record_files(root, KIND)

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        memory = None if self.catalogue is None else self.catalogue.memory
        if memory is not None and memory.loaded:
            # Only a record whose bytes hold "/download/" can link an object: the held JSON is
            # searched, and only those records are decoded (once loaded and checked, the daemon's
            # memory follows its files).
            records: Iterable = (json.loads(raw) for raw in memory.containing(b"/download/"))
        else:
            records = self.records.all_blocking()
        for record in records:
            oid = linked_object(record.get("stream_url")) if isinstance(record, dict) else None
            if oid is not None:
                yield oid, f"{KIND}/{record.get('id')}"
