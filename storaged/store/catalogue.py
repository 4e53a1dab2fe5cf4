"""In-memory catalogues of JSON records, kept in step with the tree.

Protocol
--------
*What it holds.*  For one record kind (one :class:`RecordStore` directory):
every record as compact JSON bytes, the set of ids for each value of each
*facet* (a field such as ``session_id``), and optionally a
:class:`~storaged.store.timeindex.TimeIndex` over a time span of each record,
grouped by one facet (events by session).  It is a cache: the tree stays the
truth, and deleting the memory loses nothing.

*Build.*  ``load_blocking`` reads the directory in a worker thread at start-up,
before the daemon answers requests, and the result is swapped in whole.  A
snapshot file (``<kind>/.catalogue``, see :mod:`storaged.store.snapshot`)
speeds this up; it is used only after it has been checked against the tree
(see there), never trusted blindly.  A record file that cannot be read or
parsed is left out, with a warning, and listed in ``damaged`` (id -> reason),
so a GET of it can say what is wrong and lists can say something was skipped.

*Writes.*  :class:`RecordStore` calls ``put``/``discard`` on the event loop
after the file is durable, still under the record's lock, so the memory
follows the files in the order the writes happened; a failed write leaves
the memory as it was.

*Readers.*  Queries read the memory without a lock: a write is visible as soon
as its request answers, never before its file is durable.

*What a crash leaves.*  Nothing to repair: the memory is rebuilt from the tree
(and a snapshot that no longer matches the tree is ignored) on the next start.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Hashable, Iterable

from storaged.store.timeindex import TimeIndex

Span = Callable[[dict[str, Any]], "tuple[int, int | None] | None"]
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def compact(record: dict[str, Any]) -> bytes:
    """A record as the bytes an answer carries (sorted keys, no spaces)."""
    return _compact(record).encode()


def json_array(raws: Iterable[bytes]) -> bytes:
    """A JSON array of already-encoded rows, without decoding them again."""
    return b"[" + b",".join(raws) + b"]"


class Catalogue:
    """Every record of one kind in memory, with facets and an optional span index."""

    def __init__(self, kind: str, facets: tuple[str, ...] = (), *, span: Span | None = None,
                 span_group: str | None = None) -> None:
        if span_group is not None and span_group not in facets:
            raise ValueError("span_group must be one of the facets")
        self.kind = kind
        self.facets = facets
        self.span = span
        self.span_group = span_group
        self.rows: dict[int, bytes] = {}
        self.damaged: dict[int, str] = {}
        self._by: dict[str, dict[Hashable, set[int]]] = {f: {} for f in facets}
        self._times = TimeIndex()
        self.loaded = False

    # -- building ----------------------------------------------------------------
    def row_of(self, record: dict[str, Any]) -> tuple:
        """What the catalogue keeps of a record, as a snapshot stores it: (bytes, facet values, span)."""
        extent = self.span(record) if self.span is not None else None
        return compact(record), tuple(record.get(f) for f in self.facets), extent

    def fill(self, records: Iterable[dict[str, Any]]) -> None:
        """Add many records (the start-up build, in a worker thread, before the swap)."""
        self.fill_rows({record["id"]: self.row_of(record) for record in records})

    def fill_rows(self, rows: dict[int, tuple]) -> None:
        """Add many rows made by ``row_of`` (from the files or a snapshot)."""
        held, indexes = self.rows, [self._by[f] for f in self.facets]
        group = self.facets.index(self.span_group) if self.span_group is not None else None
        entries = []
        for record_id, (raw, values, extent) in rows.items():
            held[record_id] = raw
            for index, key in zip(indexes, values):
                ids = index.get(key)
                if ids is None:
                    ids = index[key] = set()
                ids.add(record_id)
            if extent is not None:
                entries.append((record_id, extent[0], extent[1], None if group is None else values[group]))
        if entries:
            self._times = TimeIndex.build([*self._times, *entries])

    def export_rows(self, raws: dict[int, bytes]) -> dict[int, tuple]:
        """Rows for a snapshot from a copy of ``rows`` (decodes each; run it in a thread)."""
        return {record_id: self.row_of(json.loads(raw)) for record_id, raw in raws.items()}

    def adopt(self, other: "Catalogue") -> None:
        """Take over what a catalogue built elsewhere (a worker thread) holds."""
        self.rows, self.damaged, self._by, self._times = other.rows, other.damaged, other._by, other._times
        self.loaded = True

    # -- keeping in step with writes ------------------------------------------------
    def put(self, record: dict[str, Any]) -> None:
        record_id = record["id"]
        old = self.rows.get(record_id)
        if old is not None:
            self._unindex(record_id, json.loads(old))
        self.damaged.pop(record_id, None)
        self.rows[record_id] = compact(record)
        for facet, index in self._by.items():
            key = record.get(facet)
            ids = index.get(key)
            if ids is None:
                ids = index[key] = set()
            ids.add(record_id)
        if self.span is not None:
            extent = self.span(record)
            if extent is not None:
                self._times.add(record_id, extent[0], extent[1], record.get(self.span_group))

    def discard(self, record_id: int) -> None:
        self.damaged.pop(record_id, None)
        old = self.rows.pop(record_id, None)
        if old is not None:
            self._unindex(record_id, json.loads(old))

    def _unindex(self, record_id: int, record: dict[str, Any]) -> None:
        for facet, index in self._by.items():
            key = record.get(facet)
            ids = index.get(key)
            if ids is not None:
                ids.discard(record_id)
                if not ids:
                    del index[key]
        self._times.remove(record_id)

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self.rows

    def raw(self, record_id: int) -> bytes | None:
        return self.rows.get(record_id)

    def get(self, record_id: int) -> dict[str, Any] | None:
        raw = self.rows.get(record_id)
        return None if raw is None else json.loads(raw)

    def max_id(self) -> int:
        return max(self.rows, default=0)

    def count(self, facet: str, key: Hashable) -> int:
        return len(self._by[facet].get(key, ()))

    def select(self, where: dict[str, Hashable] | None = None, *, span: tuple[int | None, int | None] | None = None,
               after: int | None = None, limit: int | None = None) -> list[int]:
        """Ids (ascending) of the records whose facets equal ``where`` and whose span overlaps ``span``.

        ``span`` bounds are closed and either may be None (open).  ``after``
        keeps ids above it; ``limit`` cuts the answer (pages resume with the
        last id as ``after``).
        """
        where = where or {}
        sets = [self._by[facet].get(key, set()) for facet, key in where.items()]
        sets.sort(key=len)
        if span is not None:
            group = self.span_group
            if group in where:
                hits = self._times.query(span[0], span[1], source=where[group], any_source=False)
            else:
                hits = self._times.query(span[0], span[1])
            candidates: Iterable[int] = [record_id for _, record_id in hits]
        elif sets:
            candidates = sets.pop(0)
        else:
            candidates = self.rows.keys()
        ids = [i for i in candidates if all(i in s for s in sets)] if sets else list(candidates)
        if after is not None:
            ids = [i for i in ids if i > after]
        ids.sort()
        if limit is not None and len(ids) > limit:
            del ids[limit:]
        return ids

    def render(self, ids: Iterable[int]) -> bytes:
        """The JSON array of the records ``ids`` (the bytes already held, not re-encoded)."""
        rows = self.rows
        return json_array(rows[i] for i in ids)
