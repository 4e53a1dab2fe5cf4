"""Mutable JSON records: sessions, races, events, streams, videostreams, processes.

Protocol
--------
A record of kind K with id I is the file ``<data>/<K>/<I>.json``.

*Create.*  A new id is taken under the kind's lock ``locks/<K>/.create.lock``
(sequential ids read the hint ``<data>/<K>/.next_id`` and skip ids whose file
exists or that this process is still writing; random ids are drawn and
checked the same way); then, outside that lock, the record is written
atomically (temp + fsync + rename + fsync of the directory) before the id is
answered.  The hint is replaced atomically but not fsynced: losing
its last update in a crash can only make an id of a record deleted since
then come back, never two records share an id.

*Catalogue.*  A store may carry a :class:`~storaged.store.catalogue.Catalogue`
(every record in memory, with facets).  Once ``load()`` has built it, reads and
lists come from memory, sequential ids are handed out from memory (the daemon
is the only writer of its data root: ``locks/daemon.lock``), and every write
updates the memory after its file is durable, under the same lock.  Creates
then fsync their own file in a thread and share the directory's fsync with
every concurrent create (``DirSync``, a group commit): each is still durable
before it is answered.

*Update and delete.*  Read-modify-write under the record's own lock
``locks/<K>/<I>.lock``; the new content (fsynced) replaces the old by rename,
and the directory's fsync is shared with concurrent creates and updates
(``DirSync``) before the update is answered.  Delete
unlinks the file under the same lock.

*What a reader sees.*  A reader needs no lock: it reads the old or the new
record, never a torn one.

*Damage.*  A record that cannot be read back (torn by a disk fault, edited
behind the daemon's back) answers ``DamagedRecord`` (500 naming the file and
pointing at ``storaged fsck``) to a get or an update, and is left out of
listings, which report it (``storaged.store.damage``); nothing overwrites it
until fsck has moved it away, so no evidence is destroyed.

*What a crash leaves.*  At worst a stray ``.<I>.json.<random>.tmp`` beside the
records (the daemon sweeps it once older than ``temp_max_age``; ``fsck`` reports and removes it
if older still), and, for sequential ids, an id that
was taken but never used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from storaged.errors import BadRequest, DamagedRecord, NotFound
from storaged.store import damage
from storaged.store.atomic import DirSync, async_lock, dumps, fsync_dir, read_json, unlink_quiet, write_bytes, write_json
from storaged.store import snapshot
from storaged.store.catalogue import Catalogue
from storaged.store.layout import Layout

log = logging.getLogger("storaged.records")

MAX_SAFE_INT = 2**53 - 1
SNAPSHOT_VERSION = "records-1"
SNAPSHOT_AFTER_READS = 1000  # a start-up that read more files than this writes a snapshot
_INT_ID = re.compile(r"^[0-9]{1,16}$")


class RecordStore:
    """Records of one kind.  ``ids``: "sequence" (1, 2, 3…) or "random53" (random ints below 2**53)."""

    def __init__(self, layout: Layout, kind: str, *, ids: str = "sequence",
                 catalogue: Catalogue | None = None,
                 parse: Callable[[int, bytes], dict[str, Any]] | None = None) -> None:
        if ids not in ("sequence", "random53"):
            raise ValueError(ids)
        self.layout = layout
        self.kind = kind
        self.ids = ids
        self.dir = layout.root / kind
        self.catalogue = catalogue
        # The catalogue's reading of a file: ``parse(id, bytes)`` answers the record as memory keeps it
        # (ValueError: damaged); default: the JSON object as it is.
        self.parse = parse
        self._pending: set[int] = set()  # ids handed out whose record is being written
        self._dir_sync = DirSync(self.dir)
        self._next_id = 1  # with a loaded catalogue: the next sequential id
        self._hint_written = 0
        self._hint_lock = threading.Lock()
        self._snapshot = snapshot.path_for(layout.root, kind)
        self._trusted_snapshot_at: int | None = None
        self._started_ns = time.time_ns()

    @property
    def in_memory(self) -> bool:
        return self.catalogue is not None and self.catalogue.loaded

    # -- catalogue -----------------------------------------------------------
    async def load(self) -> None:
        """Build the catalogue from the tree, in a thread (start-up, before requests)."""
        built = await asyncio.to_thread(self._build_blocking)
        self.catalogue.adopt(built)
        try:
            hint = int(await asyncio.to_thread((self.dir / ".next_id").read_text))
        except (FileNotFoundError, ValueError):
            hint = 0
        self._next_id = max(hint, self.catalogue.max_id() + 1, max(self.catalogue.damaged, default=0) + 1)
        self._hint_written = hint

    def _build_blocking(self) -> Catalogue:
        built = self.catalogue.like()
        t0 = time.monotonic()
        true_at = snapshot.stamp(self.dir)
        saved = snapshot.read(self._snapshot, self.dir, SNAPSHOT_VERSION) if true_at is not None else None
        if saved is not None:
            try:
                built.from_columns(saved.meta["table"], saved.columns)
                built.damaged.update(saved.meta["damaged"])
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                log.warning("%s: ignoring a snapshot that does not fit together: %s", self.kind, exc)
                built, saved = self.catalogue.like(), None
        if true_at is None:
            how, read_count = "empty", 0
        elif saved is None:
            rows = {}
            ids = snapshot.record_ids(os.listdir(self.dir))
            for record_id in ids:
                record = self._read_for_catalogue(record_id, built.damaged)
                if record is not None:
                    rows[record_id] = built.row_of(record)
            built.fill_rows(rows)
            how, read_count = "read every file", len(ids)
            if read_count > SNAPSHOT_AFTER_READS:
                self._save_snapshot(built, true_at)
        elif snapshot.trusted(saved, true_at):
            how, read_count = "snapshot, directory unchanged", 0
            self._trusted_snapshot_at = saved.saved_at
        else:
            suspects = snapshot.differences(self.dir, saved.saved_at - snapshot.SLACK_NS, None,
                                            built.holds, built.held_ids, built.held_count())
            for record_id in suspects:
                damaged: dict[int, str] = {}
                record = self._read_for_catalogue(record_id, damaged)
                if record is None:
                    built.discard(record_id)
                    built.damaged.update(damaged)
                else:
                    built.put(record)
            how, read_count = "snapshot, changed files read again", len(suspects)
        log.info("%s: %d records in memory in %.2fs (%s; %d files read)", self.kind, len(built),
                 time.monotonic() - t0, how, read_count)
        return built

    def _save_snapshot(self, cat: Catalogue, true_at: snapshot.Stamp | None) -> None:
        """A snapshot of ``cat`` (which nothing changes meanwhile: a copy, or before it serves).  Blocking."""
        meta, columns = cat.frozen().columns()
        snapshot.save(self._snapshot, self.dir, SNAPSHOT_VERSION, true_at,
                      {"table": meta, "damaged": dict(cat.damaged)}, columns)

    def _read_for_catalogue(self, record_id: int, damaged: dict[int, str]) -> dict[str, Any] | None:
        try:
            if self.parse is not None:
                try:
                    record = self.parse(record_id, self.path(record_id).read_bytes())
                except FileNotFoundError:
                    raise NotFound(f"{self.kind} {record_id} not found") from None
                except ValueError as exc:
                    raise DamagedRecord(self.name(record_id), str(exc)) from None
            else:
                record = self.get_blocking(record_id)
            if record.get("id") != record_id:
                raise DamagedRecord(self.name(record_id), f"holds the id {record.get('id')!r}")
        except NotFound:
            return None  # deleted since the listing
        except DamagedRecord as exc:
            damaged[record_id] = str(exc)
            log.warning("%s is unreadable and left out of the catalogue: %s", self.name(record_id), exc)
            return None
        return record

    async def check_snapshot(self) -> int:
        """After a start that trusted a snapshot: compare the tree with the memory and fix the memory.

        Lists the directory and stats every file in a niced child process (in a thread if that cannot
        answer); reads again, under the record's lock, each file changed in place behind the stopped
        daemon's back, each file the memory lacks and each row whose file is gone.  Answers how many
        records changed.
        """
        saved_at, self._trusted_snapshot_at = self._trusted_snapshot_at, None
        if saved_at is None:
            return 0
        cat = self.catalogue
        t0 = time.monotonic()
        # Against the snapshot's ids: the rows held now differ only by this process's own writes, whose
        # files then show up as suspects that read back equal.
        suspects = await snapshot.differences_apart(self._snapshot, self.dir, SNAPSHOT_VERSION, saved_at,
                                                    saved_at - snapshot.SLACK_NS, self._started_ns)
        if suspects is None:
            view = cat.copy()  # the thread must not iterate what the event loop changes
            suspects = await asyncio.to_thread(snapshot.differences, self.dir, saved_at - snapshot.SLACK_NS,
                                               self._started_ns, cat.holds, view.held_ids, view.held_count())
        log.info("%s: the snapshot checked against the directory in %.2fs (%d files to read again)", self.kind,
                 time.monotonic() - t0, len(suspects))
        changed = 0
        for record_id in suspects:
            async with self.lock(record_id):
                damaged: dict[int, str] = {}
                record = await asyncio.to_thread(self._read_for_catalogue, record_id, damaged)
                if record is not None and record != cat.get(record_id):
                    cat.put(record)
                    changed += 1
                elif record is None and (record_id in cat or damaged):
                    cat.discard(record_id)
                    cat.damaged.update(damaged)
                    changed += 1
                elif record is None and not damaged and record_id in cat.damaged:
                    del cat.damaged[record_id]  # gone
        if changed:
            log.warning("%s: %d record files were changed behind the stopped daemon's back; read again",
                        self.kind, changed)
        return changed

    async def close(self) -> None:
        """At a clean stop (nothing writes any more): a snapshot for the next start."""
        if not self.in_memory:
            return
        view = self.catalogue.copy()

        def save() -> None:
            self._save_snapshot(view, snapshot.quiet_stamp(self.dir))

        try:
            await asyncio.to_thread(save)
        except OSError as exc:
            log.warning("%s: no snapshot written (%s); the next start reads every record", self.kind, exc)

    # -- ids ---------------------------------------------------------------
    def parse_id(self, raw: Any, what: str = "id") -> int:
        """An id from a URL or a body; BadRequest naming ``what`` when malformed."""
        if isinstance(raw, bool):
            raise BadRequest(f"malformed {what}: expected a positive integer")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and _INT_ID.match(raw):
            value = int(raw)
        else:
            raise BadRequest(f"malformed {what}: expected a positive integer")
        if not 1 <= value <= MAX_SAFE_INT:
            raise BadRequest(f"malformed {what}: expected a positive integer below 2^53")
        return value

    def path(self, record_id: int) -> Path:
        return self.dir / f"{int(record_id)}.json"

    def lock(self, record_id: int | str):
        return async_lock(self.layout.lock_for(self.kind, str(record_id)))

    # -- operations ----------------------------------------------------------
    async def create(self, data: dict[str, Any]) -> dict[str, Any]:
        """Write a new record; ``data`` gets its ``id``.  Answers the stored record."""
        if self.in_memory and self.ids == "sequence":
            return await self._create_in_memory(data)
        async with self.lock(".create"):
            record_id = await asyncio.to_thread(self._allocate_blocking)
        # The write (two fsyncs) happens outside the kind's lock: concurrent creates then share the
        # filesystem's journal commits instead of queueing one commit each behind the lock.
        record = {"id": record_id, **{k: v for k, v in data.items() if k != "id"}}
        try:
            await asyncio.to_thread(self._put_blocking, record)
            if self.in_memory:
                self.catalogue.put(record)
        finally:
            self._pending.discard(record_id)
        return record

    async def _create_in_memory(self, data: dict[str, Any]) -> dict[str, Any]:
        record_id = self._next_id
        self._next_id += 1
        record = {"id": record_id, **{k: v for k, v in data.items() if k != "id"}}
        await asyncio.to_thread(self._write_new_blocking, record)
        await self._dir_sync.sync()
        self.catalogue.put(record)
        return record

    def _write_new_blocking(self, record: dict[str, Any]) -> None:
        """The record file (fsynced, renamed into place; the directory fsync is the caller's)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path(record["id"]), dumps(record), durable=True, sync_dir=False)
        with self._hint_lock:
            if record["id"] >= self._hint_written:
                # A hint, not a promise (see the protocol): not fsynced.
                self._hint_written = record["id"] + 1
                write_json(self.dir / ".next_id", self._hint_written, durable=False)

    def _allocate_blocking(self) -> int:
        """A fresh id (the kind's create lock is held).  Blocking."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.ids == "sequence":
            counter = self.dir / ".next_id"
            try:
                next_id = int(counter.read_text())
            except (FileNotFoundError, ValueError):
                next_id = 1 + max(self._ids_on_disk(), default=0)
            while self.path(next_id).exists() or next_id in self._pending:
                next_id += 1
            # The counter is a hint, not a promise: not fsynced (the record is).  After a crash
            # that loses it, the records on disk (skipped above) still keep ids unique.
            write_json(counter, next_id + 1, durable=False)
            record_id = next_id
        else:
            while True:
                record_id = secrets.randbelow(MAX_SAFE_INT - 2**40) + 2**40
                if not self.path(record_id).exists() and record_id not in self._pending:
                    break
        self._pending.add(record_id)
        return record_id

    def _ids_on_disk(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]

    def name(self, record_id: int) -> str:
        """The record's file relative to the data root, as errors and fsck name it."""
        return f"{self.kind}/{int(record_id)}.json"

    def get_blocking(self, record_id: int) -> dict[str, Any]:
        """The record from its file (bypasses the catalogue)."""
        try:
            record = read_json(self.path(record_id))
        except FileNotFoundError:
            raise NotFound(f"{self.kind} {record_id} not found") from None
        except ValueError as exc:
            raise DamagedRecord(self.name(record_id), f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise DamagedRecord(self.name(record_id), "not a JSON object")
        return record

    async def get(self, record_id: int) -> dict[str, Any]:
        if self.in_memory:
            record = self.catalogue.get(record_id)
            if record is not None:
                return record
            if record_id not in self.catalogue.damaged:
                raise NotFound(f"{self.kind} {record_id} not found")
        return await asyncio.to_thread(self.get_blocking, record_id)

    async def update(self, record_id: int, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply ``change`` (which may raise to refuse) to the record under its lock."""
        async with self.lock(record_id):
            current = await self.get(record_id)
            new = change(dict(current))
            if new is None:
                new = current
            if new != current:
                # The directory's fsync (the rename's durability) is shared with concurrent writes.
                await asyncio.to_thread(write_bytes, self.path(record_id), dumps(new), sync_dir=False)
                await self._dir_sync.sync()
                if self.catalogue is not None:
                    self.catalogue.put(new)
            return new

    def _put_blocking(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.path(record["id"]), record)

    async def delete(self, record_id: int) -> dict[str, Any]:
        async with self.lock(record_id):
            record = await self.get(record_id)
            await asyncio.to_thread(self._delete_blocking, record_id)
            if self.catalogue is not None:
                self.catalogue.discard(record_id)
            return record

    def _delete_blocking(self, record_id: int) -> None:
        unlink_quiet(self.path(record_id))
        fsync_dir(self.dir)

    def all_blocking(self) -> list[dict[str, Any]]:
        out = []
        for record_id in sorted(self._ids_on_disk()):
            try:
                out.append(self.get_blocking(record_id))
            except NotFound:
                continue  # deleted since the listing
            except DamagedRecord as exc:
                damage.skipped(exc.extra["damaged"], "not readable")
        return out

    async def all(self) -> list[dict[str, Any]]:
        """Every record, in id order (from memory, or a directory walk in a thread)."""
        if self.in_memory:
            cat = self.catalogue
            self.report_damaged()
            return [cat.get(i) for i in cat.ids()]
        return await asyncio.to_thread(self.all_blocking)

    def report_damaged(self) -> None:
        """Tell the listing request which records of this kind the catalogue had to leave out."""
        damaged = self.catalogue.damaged
        for record_id in list(damaged):
            if not self.path(record_id).exists():  # rare: only records met damaged at start-up
                del damaged[record_id]  # moved away (fsck --repair) or deleted
                continue
            damage.skipped(self.name(record_id), "not readable")
