"""The sessions family's answers: split jobs, the videos its records point to, events' sessions.

* Split jobs ``<data>/sessions/<id>.split/<job_id>/`` expire like clips
  (``retention_exports``) once finished; the race clips they stored are
  objects that the races reference.
* References: a session's or race's ``video_url`` that is a
  ``/download/<id>`` link keeps that object.
* fsck: every event must name a session that exists; with ``--repair`` an
  orphan event is moved to lost+found (never deleted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from storaged.config import Config
from storaged.provider import (KEPT, FsckContext, Item, Kind, Provider, Scan, delete_finished_job, job_item,
                               record_files)
from storaged.store.layout import Layout
from storaged.store.objects import linked_object
from storaged.store.records import RecordStore
from storaged.store.tree import subdirs

SPLIT_SUFFIX = ".split"


class SessionsProvider(Provider):
    name = "sessions"
    top_dirs = ("sessions", "races", "events")

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.sessions = RecordStore(layout, "sessions")
        self.races = RecordStore(layout, "races")
        self.events = RecordStore(layout, "events")
        self.kinds = (Kind("splits", "retention_exports", 1, self.items, delete_finished_job, KEPT,
                           "finished session split jobs (their race clips are uploads)"),)

    def replicable(self, root: Path) -> Iterator[str]:
        for kind in ("sessions", "races", "events"):
            yield from record_files(root, kind)

    def job_roots(self) -> Iterable[Path]:
        for d in subdirs(self.sessions.dir):
            if d.name.endswith(SPLIT_SUFFIX) and d.name[:-len(SPLIT_SUFFIX)].isdigit():
                yield d

    def items(self, scan: Scan) -> Iterator[Item]:
        for root in self.job_roots():
            for jd in subdirs(root):
                item = job_item("splits", scan, jd, {"session": int(root.name[:-len(SPLIT_SUFFIX)])})
                if item is not None:
                    yield item

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        for store in (self.sessions, self.races):
            for record in store.all_blocking():
                oid = linked_object(record.get("video_url")) if isinstance(record, dict) else None
                if oid is not None:
                    yield oid, f"{store.kind}/{record.get('id')}"

    def fsck(self, check: FsckContext) -> None:
        sessions = {r.get("id") for r in self.sessions.all_blocking() if isinstance(r, dict)}
        for event in self.events.all_blocking():
            if not isinstance(event, dict) or event.get("session_id") in sessions:
                continue
            path = self.events.path(event["id"])
            check.problem("orphan event", path, f"its session {event.get('session_id')} does not exist",
                          lambda path=path: check.to_lost_found(path) + " (kept there, not deleted)")
