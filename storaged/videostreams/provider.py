"""The videostreams family's answers: a videostream whose ``stream_url`` is a stored object keeps it.

Records are ``<data>/videostreams/<id>.json`` (see storaged.videostreams.service);
a ``stream_url`` that is a ``/download/<id>`` link (relative or absolute)
references that object, so retention keeps it while the record exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from storaged.config import Config
from storaged.provider import Provider, Scan, record_files
from storaged.store.layout import Layout
from storaged.store.objects import linked_object
from storaged.store.records import RecordStore
from storaged.videostreams.service import KIND


class VideostreamsProvider(Provider):
    name = "videostreams"
    top_dirs = (KIND,)

    def __init__(self, layout: Layout, config: Config) -> None:
        self.records = RecordStore(layout, KIND, ids="random53")

    def replicable(self, root: Path) -> Iterator[str]:
        return record_files(root, KIND)

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        for record in self.records.all_blocking():
            oid = linked_object(record.get("stream_url")) if isinstance(record, dict) else None
            if oid is not None:
                yield oid, f"{KIND}/{record.get('id')}"
