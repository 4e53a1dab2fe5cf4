"""In-memory catalogues of JSON records, kept in step with the tree.

Protocol
--------
*What it holds.*  For one record kind (one :class:`RecordStore` directory):
every record as compact JSON bytes, the ids for each value of each *facet*
(a field such as ``session_id``), and optionally a span index
(:mod:`storaged.store.timeindex`) over a time span of each record, grouped by
one facet (events by session).  It is a cache: the tree stays the truth, and
deleting the memory loses nothing.

*How, compactly.*  What start-up built is a :class:`Frozen` table: columns
(``array`` of ids ascending, offsets into one ``bytes`` of every record's
JSON, per facet an ``array`` of value codes and the rows sorted by value,
the span columns and runs of :class:`~storaged.store.timeindex.FrozenSpans`)
- about 200 bytes an event where a dict of objects took over 500 - and what
a snapshot stores as it is.  Loaded from a snapshot, the JSON is the
snapshot file's pages mapped read-only (:mod:`storaged.store.snapshot`), not
a copy in the process.  Writes since then live in small dicts and sets
layered over it (``hidden`` names the frozen rows they replaced or
deleted); a clean stop folds both into the next snapshot.

*Build.*  ``load_blocking`` reads the directory in a worker thread at start-up,
before the daemon answers requests, and the result is swapped in whole.  A
snapshot file (``cache/<kind>.snapshot``, see :mod:`storaged.store.snapshot`)
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
from array import array
from bisect import bisect_left, bisect_right
from heapq import merge
from typing import Any, Callable, Hashable, Iterable, Iterator

from storaged.store.timeindex import NO_SPAN, OPEN_END, FrozenSpans, SpanIndex

Span = Callable[[dict[str, Any]], "tuple[int, int | None] | None"]
Row = tuple  # (JSON bytes, facet values, span or None): what the catalogue keeps of a record
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def compact(record: dict[str, Any]) -> bytes:
    """A record as the bytes an answer carries (sorted keys, no spaces)."""
    return _compact(record).encode()


def json_array(raws: Iterable[bytes]) -> bytes:
    """A JSON array of already-encoded rows, without decoding them again."""
    return b"[" + b",".join(raws) + b"]"


class _Facet:
    """One facet of a frozen table: a value code per row, and the rows grouped by value (ascending)."""

    __slots__ = ("codes", "values", "order", "first", "code_of")

    def __init__(self, codes: array, values: list, order: array, first: array) -> None:
        if len(first) != len(values) + 1 or len(order) != len(codes) or (first and first[-1] != len(order)):
            raise ValueError("facet columns of different lengths")
        self.codes, self.values, self.order, self.first = codes, values, order, first
        self.code_of = {value: code for code, value in enumerate(values)}

    def rows_of(self, value: Hashable) -> tuple[int, int]:
        code = self.code_of.get(value)
        return (0, 0) if code is None else (self.first[code], self.first[code + 1])


class Frozen:
    """Rows that never change, as columns (see the protocol)."""

    def __init__(self, ids: array, offsets: array, blob: bytes, facets: list[_Facet],
                 spans: FrozenSpans | None) -> None:
        if len(offsets) != len(ids) + 1 or offsets[-1] != len(blob):
            raise ValueError("row columns of different lengths")
        self.ids, self.offsets, self.blob, self.facets, self.spans = ids, offsets, blob, facets, spans

    @classmethod
    def build(cls, rows: dict[int, Row], facet_count: int, span_group: int | None) -> "Frozen":
        """From rows made by :meth:`Catalogue.row_of` (a worker thread)."""
        ids = array("q", sorted(rows))
        offsets = array("q", [0])
        parts = []
        size = 0
        maps: list[dict] = [{} for _ in range(facet_count)]
        codes = [array("i") for _ in range(facet_count)]
        starts, ends = array("q"), array("q")
        for record_id in ids:
            raw, values, extent = rows[record_id]
            parts.append(raw)
            size += len(raw)
            offsets.append(size)
            for code_map, column, value in zip(maps, codes, values):
                code = code_map.get(value)
                if code is None:
                    code = code_map[value] = len(code_map)
                column.append(code)
            if extent is None:
                starts.append(NO_SPAN)
                ends.append(OPEN_END)
            else:
                starts.append(extent[0])
                ends.append(OPEN_END if extent[1] is None else extent[1])
        facets = []
        for code_map, column in zip(maps, codes):
            values = list(code_map)
            counts = [0] * (len(values) + 1)
            for code in column:
                counts[code + 1] += 1
            first = array("q", counts)
            for i in range(1, len(first)):
                first[i] += first[i - 1]
            fill = array("q", first)
            order = array("i", bytes(4 * len(column)))
            for p, code in enumerate(column):
                order[fill[code]] = p
                fill[code] += 1
            facets.append(_Facet(column, values, order, first))
        spans = None
        if span_group is not None or any(s != NO_SPAN for s in starts):
            if span_group is None:
                groups, group_values = array("i", bytes(4 * len(ids))), [None]
            else:
                groups, group_values = facets[span_group].codes, facets[span_group].values
            spans = FrozenSpans.build(ids, starts, ends, groups, group_values)
        return cls(ids, offsets, b"".join(parts), facets, spans)

    # -- as a snapshot stores it -----------------------------------------------------
    def columns(self) -> tuple[Any, dict[str, Any]]:
        """(meta, columns) for :func:`storaged.store.snapshot.save`."""
        cols: dict[str, Any] = {"ids": self.ids, "offsets": self.offsets, "blob": self.blob}
        meta: dict[str, Any] = {"facets": [f.values for f in self.facets], "spans": None}
        for n, facet in enumerate(self.facets):
            cols[f"f{n}.codes"], cols[f"f{n}.order"], cols[f"f{n}.first"] = facet.codes, facet.order, facet.first
        if self.spans is not None:
            s = self.spans
            group = next((n for n, f in enumerate(self.facets) if f.codes is s.groups), None)
            meta["spans"] = {"group": group, "runs": s.runs_table(), "values": s.group_values}
            cols["starts"], cols["ends"], cols["order"] = s.starts, s.ends, s.order
            if group is None:
                cols["groups"] = s.groups
        return meta, cols

    @classmethod
    def from_columns(cls, meta: Any, cols: dict[str, Any]) -> "Frozen":
        """Back from ``columns()`` (ValueError, KeyError or TypeError when they do not fit together)."""
        facets = [_Facet(cols[f"f{n}.codes"], list(values), cols[f"f{n}.order"], cols[f"f{n}.first"])
                  for n, values in enumerate(meta["facets"])]
        for facet in facets:
            if len(facet.codes) != len(cols["ids"]):
                raise ValueError("a facet of another length")
        spans = None
        if meta["spans"] is not None:
            s = meta["spans"]
            groups = cols["groups"] if s["group"] is None else facets[s["group"]].codes
            spans = FrozenSpans(cols["ids"], cols["starts"], cols["ends"], groups, list(s["values"]),
                                cols["order"], [tuple(r) for r in s["runs"]])
        return cls(cols["ids"], cols["offsets"], cols["blob"], facets, spans)

    # -- reading ------------------------------------------------------------------------
    def position(self, record_id: int) -> int:
        ids = self.ids
        p = bisect_left(ids, record_id)
        return p if p < len(ids) and ids[p] == record_id else -1

    def raw_at(self, p: int) -> bytes:
        return self.blob[self.offsets[p]:self.offsets[p + 1]]

    def row_at(self, p: int) -> Row:
        values = tuple(f.values[f.codes[p]] for f in self.facets)
        extent = None
        if self.spans is not None and self.spans.starts[p] != NO_SPAN:
            end = self.spans.ends[p]
            extent = (self.spans.starts[p], None if end == OPEN_END else end)
        return self.raw_at(p), values, extent


EMPTY = Frozen(array("q"), array("q", [0]), b"", [], None)


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
        self.damaged: dict[int, str] = {}
        self.loaded = False
        self._set_base(EMPTY if not facets else Frozen.build({}, len(facets), self._group_index()))

    def _group_index(self) -> int | None:
        return None if self.span_group is None else self.facets.index(self.span_group)

    def _set_base(self, base: Frozen) -> None:
        if len(base.facets) != len(self.facets):
            raise ValueError("a table of other facets")
        self._base = base
        self._hidden: set[int] = set()  # frozen rows replaced or deleted since
        self._rows: dict[int, bytes] = {}  # rows written since
        self._values: dict[int, tuple] = {}  # their facet values
        self._by: dict[str, dict[Hashable, set[int]]] = {f: {} for f in self.facets}
        self._times = SpanIndex(base.spans) if base.spans is not None else SpanIndex()

    def like(self) -> "Catalogue":
        """An empty catalogue of the same shape (a worker thread fills it, then ``adopt``)."""
        return Catalogue(self.kind, self.facets, span=self.span, span_group=self.span_group)

    # -- building ----------------------------------------------------------------
    def row_of(self, record: dict[str, Any]) -> Row:
        """What the catalogue keeps of a record, as a snapshot stores it: (bytes, facet values, span)."""
        extent = self.span(record) if self.span is not None else None
        return compact(record), tuple(record.get(f) for f in self.facets), extent

    def fill(self, records: Iterable[dict[str, Any]]) -> None:
        """Add many records (the start-up build, in a worker thread, before the swap)."""
        self.fill_rows({record["id"]: self.row_of(record) for record in records})

    def fill_rows(self, rows: dict[int, Row]) -> None:
        """Make ``rows`` (made by ``row_of``) and what is held already the frozen table."""
        if len(self):
            rows = {**dict(self.export()), **rows}
        self._set_base(Frozen.build(rows, len(self.facets), self._group_index()))

    def from_columns(self, meta: Any, columns: dict[str, Any]) -> None:
        """Take a snapshot's table as the frozen rows."""
        self._set_base(Frozen.from_columns(meta, columns))

    def export(self) -> Iterator[tuple[int, Row]]:
        """Every row in id order (a snapshot; run it where nothing writes, or on a ``copy``)."""
        base, hidden, rows, values = self._base, self._hidden, self._rows, self._values
        frozen = ((record_id, p) for p, record_id in enumerate(base.ids) if record_id not in hidden)
        written = ((record_id, -1) for record_id in sorted(rows))
        for record_id, p in merge(frozen, written):
            if p >= 0:
                yield record_id, base.row_at(p)
            else:
                yield record_id, (rows[record_id], values[record_id], self._extent(record_id))

    def _extent(self, record_id: int) -> tuple[int, int | None] | None:
        entry = self._times.get(record_id)
        return None if entry is None else entry[:2]

    def frozen(self) -> Frozen:
        """Everything held as one frozen table (for a snapshot: a worker thread, on a ``copy``)."""
        if not self._hidden and not self._rows:
            return self._base
        return Frozen.build(dict(self.export()), len(self.facets), self._group_index())

    def copy(self) -> "Catalogue":
        """A view that later writes do not change (cheap: the frozen table is shared)."""
        other = self.like()
        other._base, other._hidden, other._rows, other._values = (
            self._base, set(self._hidden), dict(self._rows), dict(self._values))
        times = SpanIndex(self._times.base)
        times.hidden = set(self._times.hidden)
        for entry in self._times.delta:
            times.delta.add(*entry)
        other._times = times
        other.damaged = dict(self.damaged)
        return other

    def adopt(self, other: "Catalogue") -> None:
        """Take over what a catalogue built elsewhere (a worker thread) holds."""
        self._base, self._hidden, self._rows, self._values, self._by, self._times = (
            other._base, other._hidden, other._rows, other._values, other._by, other._times)
        self.damaged = other.damaged
        self.loaded = True

    # -- keeping in step with writes ------------------------------------------------
    def put(self, record: dict[str, Any]) -> None:
        record_id = record["id"]
        self._unindex(record_id)
        self.damaged.pop(record_id, None)
        values = tuple(record.get(f) for f in self.facets)
        self._rows[record_id] = compact(record)
        self._values[record_id] = values
        for index, key in zip(self._by.values(), values):
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
        self._unindex(record_id)

    def _unindex(self, record_id: int) -> None:
        if self._rows.pop(record_id, None) is not None:
            for index, key in zip(self._by.values(), self._values.pop(record_id)):
                ids = index.get(key)
                if ids is not None:
                    ids.discard(record_id)
                    if not ids:
                        del index[key]
        elif record_id not in self._hidden and self._base.position(record_id) >= 0:
            self._hidden.add(record_id)
        self._times.remove(record_id)

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._base.ids) - len(self._hidden) + len(self._rows)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self._rows or (record_id not in self._hidden and self._base.position(record_id) >= 0)

    def holds(self, record_id: int) -> bool:
        """Whether the memory knows the record: held, or left out as damaged."""
        return record_id in self or record_id in self.damaged

    def held_ids(self) -> Iterator[int]:
        """Every id the memory knows (see ``holds``); iterate a ``copy`` from another thread."""
        yield from self.ids()
        yield from self.damaged

    def held_count(self) -> int:
        return len(self) + len(self.damaged)

    def ids(self) -> list[int]:
        """Every id, ascending."""
        return [record_id for record_id, _ in self._ids_after(None)]

    @property
    def rows(self) -> dict[int, bytes]:
        """Every record's bytes by id (a copy: for tests and tools, not for requests)."""
        return {record_id: self.raw(record_id) for record_id in self.ids()}

    def raw(self, record_id: int) -> bytes | None:
        raw = self._rows.get(record_id)
        if raw is None and record_id not in self._hidden:
            p = self._base.position(record_id)
            if p >= 0:
                raw = self._base.raw_at(p)
        return raw

    def get(self, record_id: int) -> dict[str, Any] | None:
        raw = self.raw(record_id)
        return None if raw is None else json.loads(raw)

    def max_id(self) -> int:
        top = max(self._rows, default=0)
        ids, hidden = self._base.ids, self._hidden
        for p in range(len(ids) - 1, -1, -1):
            if ids[p] not in hidden:
                return max(top, ids[p])
        return top

    def count(self, facet: str, key: Hashable) -> int:
        lo, hi = self._base.facets[self.facets.index(facet)].rows_of(key)
        ids = self._base.ids
        hidden = sum(1 for p in self._base.facets[self.facets.index(facet)].order[lo:hi]
                     if ids[p] in self._hidden) if self._hidden else 0
        return hi - lo - hidden + len(self._by[facet].get(key, ()))

    def _value(self, record_id: int, n: int) -> Any:
        """The ``n``th facet value of a held record."""
        values = self._values.get(record_id)
        if values is not None:
            return values[n]
        facet = self._base.facets[n]
        return facet.values[facet.codes[self._base.position(record_id)]]

    def _ids_after(self, after: int | None) -> Iterator[tuple[int, int]]:
        """(id, -1) of every id above ``after``, ascending, lazily."""
        ids, hidden = self._base.ids, self._hidden
        p = 0 if after is None else bisect_right(ids, after)
        frozen = ((ids[i], -1) for i in range(p, len(ids)) if ids[i] not in hidden)
        written = ((i, -1) for i in sorted(self._rows) if after is None or i > after)
        return merge(frozen, written)

    def _facet_after(self, n: int, key: Hashable, after: int | None) -> Iterator[int]:
        """Ids with facet ``n`` equal to ``key``, above ``after``, ascending, lazily."""
        facet, ids, hidden = self._base.facets[n], self._base.ids, self._hidden
        lo, hi = facet.rows_of(key)
        order = facet.order
        if after is not None:  # rows of one value are in position order, which is id order
            lo = bisect_right(order, after, lo, hi, key=ids.__getitem__)
        frozen = (ids[order[i]] for i in range(lo, hi) if ids[order[i]] not in hidden)
        written = sorted(i for i in self._by[self.facets[n]].get(key, ()) if after is None or i > after)
        return merge(frozen, written)

    def spans(self, start: int | None, end: int | None, *, group: Any = None, any_group: bool = True,
              after: tuple[int, int] | None = None, limit: int | None = None) -> list[tuple[int, int]]:
        """``(start, id)`` of every record whose span overlaps ``[start, end]``, in that order
        (``any_group`` False: only those whose ``span_group`` facet equals ``group``), the first
        ``limit`` of those after ``after``."""
        return self._times.query(start, end, source=group, any_source=any_group, after=after, limit=limit)

    def select(self, where: dict[str, Hashable] | None = None, *, span: tuple[int | None, int | None] | None = None,
               after: int | None = None, limit: int | None = None) -> list[int]:
        """Ids (ascending) of the records whose facets equal ``where`` and whose span overlaps ``span``.

        ``span`` bounds are closed and either may be None (open).  ``after``
        keeps ids above it; ``limit`` cuts the answer (pages resume with the
        last id as ``after``).
        """
        where = where or {}
        checks = [(self.facets.index(facet), key) for facet, key in where.items()]
        if span is not None:
            group = self.span_group
            if group in where:
                hits = self._times.query(span[0], span[1], source=where[group], any_source=False)
                checks = [(n, key) for n, key in checks if self.facets[n] != group]
            else:
                hits = self._times.query(span[0], span[1])
            found = sorted(record_id for _, record_id in hits if after is None or record_id > after)
            candidates: Iterable[int] = found
        elif checks:
            checks.sort(key=lambda c: self.count(self.facets[c[0]], c[1]))
            n, key = checks.pop(0)
            candidates = self._facet_after(n, key, after)
        else:
            candidates = (record_id for record_id, _ in self._ids_after(after))
        out = []
        for record_id in candidates:
            if checks and not all(self._value(record_id, n) == key for n, key in checks):
                continue
            out.append(record_id)
            if limit is not None and len(out) == limit:
                break
        return out

    def containing(self, needle: bytes) -> list[bytes]:
        """The bytes of every record whose JSON contains ``needle``, found by searching the held bytes
        (no record decoded), for a worker thread while the event loop writes.

        The hidden set is copied before the written rows: a write racing the copies can then only
        make a record show twice (its frozen and its new bytes), never neither.
        """
        base = self._base
        hidden = set(self._hidden)
        rows = list(self._rows.values())
        blob, offsets, ids = base.blob, base.offsets, base.ids
        out = []
        at = blob.find(needle)
        while at >= 0:
            p = bisect_right(offsets, at) - 1
            if ids[p] not in hidden:
                out.append(base.raw_at(p))
            at = blob.find(needle, offsets[p + 1])
        out.extend(raw for raw in rows if needle in raw)
        return out

    def render(self, ids: Iterable[int]) -> bytes:
        """The JSON array of the records ``ids`` (the bytes already held, not re-encoded)."""
        return json_array(self.raw(i) for i in ids)
