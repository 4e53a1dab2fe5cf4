"""In-memory interval index for overlap queries over time spans (videostreams, events).

An entry is ``(id, start, end, source)`` with times as integer microseconds
since the epoch; ``end`` None means "still going" (a live stream).  A query
``[qs, qe]`` (either bound may be None = open-ended) answers every entry that
overlaps it, bounds included: ``start <= qe`` and (``end`` is None or
``end >= qs``), in ``(start, id)`` order, ``limit`` at a time, resuming after
a ``(start, id)`` cursor.

How: entries are split into *runs* by duration class (a factor of 8 in
duration per class: ``bit_length(end - start) // 3``; open entries get their
own run).  A run is a sorted list of keys ``start << 53 | id`` with the ends
alongside, and remembers the longest duration ``D`` it ever held.  In a run,
an overlapping entry starts in ``[qs - D, qe]`` - two bisects - and most of
that slice really overlaps (durations in a run differ by less than 8x), so a
query costs ``O(runs * log n + answer)`` however long or short the streams
are; a handful of runs cover seconds to months.  (A single sorted-by-start
list with a running max-end degrades to a full scan as soon as one stream is
very long or still live.)  One set of runs per capture
source and one over everything (queries without a source filter).

Not thread-safe: the owner mutates it from one thread (the event loop); a
fresh one is built in a worker thread at start-up and then handed over.

*Compact form for a million entries.*  :class:`FrozenSpans` holds the same
runs as columns (``array`` of starts and ends per row of a table whose ids
are sorted, and each run as a slice of one array of row positions sorted by
``(start, id)``): about 24 bytes an entry instead of a few hundred, and a
snapshot stores the columns as they are, so loading is ``frombytes`` with no
sorting.  It never changes; :class:`SpanIndex` layers a :class:`TimeIndex`
of the entries written since (and a set of frozen ids they hide or delete)
over it and answers queries from both.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import Any, Iterable, Iterator, Sequence

ID_BITS = 53
ID_MASK = (1 << ID_BITS) - 1
OPEN = -1  # run key of entries without an end
CLASS_BITS = 3  # a run holds durations within a factor of 2**3
OPEN_END = 2**63 - 1  # the end column of an entry without an end
NO_SPAN = -2**63  # the start column of a row without a span
_POS_BITS = 32  # row positions packed under a start while sorting

Entry = tuple[int, int, "int | None", "int | None"]  # id, start, end, source


def _key(start: int, record_id: int) -> int:
    return (start << ID_BITS) | record_id


def _run_of(start: int, end: int | None) -> int:
    return OPEN if end is None else (end - start).bit_length() // CLASS_BITS


class _Run:
    __slots__ = ("keys", "ends", "longest")

    def __init__(self, run: int) -> None:
        self.keys: list[int] = []
        self.ends: list[int | None] = []
        # The longest duration ever held (kept after removals: a bound is enough).
        self.longest: int | None = None if run == OPEN else 0


class _Runs:
    """The runs of one capture source (or of all of them)."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: dict[int, _Run] = {}

    def add(self, key: int, run: int, end: int | None) -> None:
        r = self.runs.get(run)
        if r is None:
            r = self.runs[run] = _Run(run)
        i = bisect_left(r.keys, key)
        r.keys.insert(i, key)
        r.ends.insert(i, end)
        if end is not None and end - (key >> ID_BITS) > r.longest:
            r.longest = end - (key >> ID_BITS)

    def remove(self, key: int, run: int) -> None:
        r = self.runs[run]
        i = bisect_left(r.keys, key)
        if i < len(r.keys) and r.keys[i] == key:
            del r.keys[i]
            del r.ends[i]
        if not r.keys:
            del self.runs[run]

    def query(self, qs: int | None, qe: int | None, after: int | None, limit: int | None) -> list[int]:
        """Matching keys in order (at most ``limit``)."""
        found: list[int] = []
        many = len(self.runs) > 1
        for r in self.runs.values():
            keys, ends = r.keys, r.ends
            if qs is None or r.longest is None:
                lo = 0
            else:
                lo = bisect_left(keys, (qs - r.longest) << ID_BITS)
            if after is not None:
                lo = max(lo, bisect_right(keys, after))
            hi = len(keys) if qe is None else bisect_left(keys, (qe + 1) << ID_BITS)
            if lo >= hi:
                continue
            if qs is None:
                part = keys[lo:hi] if limit is None else keys[lo:min(hi, lo + limit)]
            else:
                part = []
                for i in range(lo, hi):
                    end = ends[i]
                    if end is None or end >= qs:
                        part.append(keys[i])
                        if limit is not None and len(part) == limit:
                            break
            found.extend(part)
        if many:
            found.sort()
        if limit is not None and len(found) > limit:
            del found[limit:]
        return found


class TimeIndex:
    def __init__(self) -> None:
        self._all = _Runs()
        self._sources: dict[int | None, _Runs] = {}
        self._entries: dict[int, tuple[int, int | None, int | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self._entries

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> "TimeIndex":
        """A new index from many entries at once (sorts each run once instead of inserting)."""
        index = cls()
        table = index._entries
        groups: dict[tuple[int | None, int], list[int]] = {}
        count = 0
        for record_id, start, end, source in entries:
            count += 1
            table[record_id] = (start, end, source)
            group = (source, OPEN if end is None else (end - start).bit_length() // CLASS_BITS)
            keys = groups.get(group)
            if keys is None:
                keys = groups[group] = []
            keys.append((start << ID_BITS) | record_id)
        if count != len(table):
            raise ValueError("duplicate ids")
        # Plain ints sort several times faster than (key, end) pairs; the ends
        # are looked up afterwards.
        merged: dict[int, list[int]] = {}
        longest: dict[int, int | None] = {}
        for (source, run), keys in groups.items():
            keys.sort()
            runs = index._sources.get(source)
            if runs is None:
                runs = index._sources[source] = _Runs()
            r = runs.runs[run] = _make_run(run, keys, table)
            merged.setdefault(run, []).extend(keys)
            longest[run] = None if r.longest is None else max(longest.get(run) or 0, r.longest)
        for run, keys in merged.items():
            keys.sort()  # a concatenation of sorted runs: timsort merges them
            index._all.runs[run] = _make_run(run, keys, table, longest[run])
        return index

    def add(self, record_id: int, start: int, end: int | None, source: int | None) -> None:
        """Insert, or replace the entry with the same id."""
        if record_id in self._entries:
            self.remove(record_id)
        if end is not None and end < start:
            raise ValueError("end before start")
        self._entries[record_id] = (start, end, source)
        key, run = _key(start, record_id), _run_of(start, end)
        self._all.add(key, run, end)
        runs = self._sources.get(source)
        if runs is None:
            runs = self._sources[source] = _Runs()
        runs.add(key, run, end)

    def remove(self, record_id: int) -> bool:
        entry = self._entries.pop(record_id, None)
        if entry is None:
            return False
        start, end, source = entry
        key, run = _key(start, record_id), _run_of(start, end)
        self._all.remove(key, run)
        runs = self._sources[source]
        runs.remove(key, run)
        if not runs.runs:
            del self._sources[source]
        return True

    def get(self, record_id: int) -> tuple[int, int | None, int | None] | None:
        return self._entries.get(record_id)

    def query(self, start: int | None = None, end: int | None = None, *, source: int | None = None,
              any_source: bool = True, after: tuple[int, int] | None = None,
              limit: int | None = None) -> list[tuple[int, int]]:
        """``(start, id)`` of every entry overlapping ``[start, end]``, in that order.

        ``any_source`` False restricts to entries of ``source`` (which may be
        None: entries without a source).  ``after`` is the ``(start, id)`` of
        the last entry of the previous page.
        """
        runs = self._all if any_source else self._sources.get(source)
        if runs is None or (start is not None and end is not None and end < start):
            return []
        after_key = None if after is None else _key(after[0], after[1])
        keys = runs.query(start, end, after_key, limit)
        return [(k >> ID_BITS, k & ID_MASK) for k in keys]

    def __iter__(self) -> Iterator[Entry]:
        for record_id, (start, end, source) in self._entries.items():
            yield record_id, start, end, source


def _make_run(run: int, keys: list[int], table: dict, longest: int | None = None) -> _Run:
    r = _Run(run)
    r.keys = keys
    r.ends = [table[k & ID_MASK][1] for k in keys]
    if run != OPEN:
        r.longest = longest if longest is not None else max(e - (k >> ID_BITS) for k, e in zip(keys, r.ends))
    return r


class FrozenSpans:
    """The spans of the rows of a table (row ``p`` has id ``ids[p]``, ids ascending), as columns.

    ``starts``/``ends`` are ``array('q')`` (``NO_SPAN``/``OPEN_END`` as above),
    ``groups`` an ``array('i')`` of codes into ``group_values`` (the source of
    each row).  ``order`` is one ``array('i')`` of positions; each run is a
    slice ``[lo, hi)`` of it sorted by ``(start, id)``, with its longest
    duration (None for open entries): ``by_group[code][run]`` and ``all[run]``.
    """

    __slots__ = ("ids", "starts", "ends", "groups", "group_values", "order", "by_group", "all", "_code_of", "count")

    def __init__(self, ids: Sequence[int], starts: array, ends: array, groups: array, group_values: list,
                 order: array, runs: list[tuple[int, int, int, int, int | None]]) -> None:
        if not (len(ids) == len(starts) == len(ends) == len(groups)):
            raise ValueError("columns of different lengths")
        self.ids, self.starts, self.ends, self.groups = ids, starts, ends, groups
        self.group_values = group_values
        self._code_of = {value: code for code, value in enumerate(group_values)}
        self.order = order
        self.by_group: dict[int, dict[int, tuple[int, int, int | None]]] = {}
        self.all: dict[int, tuple[int, int, int | None]] = {}
        self.count = 0
        for code, run, lo, hi, longest in runs:
            if not 0 <= lo <= hi <= len(order):
                raise ValueError("a run outside the order column")
            if code < 0:
                self.all[run] = (lo, hi, longest)
                self.count += hi - lo
            else:
                self.by_group.setdefault(code, {})[run] = (lo, hi, longest)

    @classmethod
    def build(cls, ids: Sequence[int], starts: array, ends: array, groups: array,
              group_values: list) -> "FrozenSpans":
        """Sort the rows into runs (a worker thread: the start-up build, a snapshot)."""
        keyed: dict[tuple[int, int], list[int]] = {}
        longest: dict[tuple[int, int], int | None] = {}
        for p in range(len(starts)):
            start = starts[p]
            if start == NO_SPAN:
                continue
            end = ends[p]
            run = OPEN if end == OPEN_END else (end - start).bit_length() // CLASS_BITS
            group = (groups[p], run)
            keys = keyed.get(group)
            if keys is None:
                keys = keyed[group] = []
                longest[group] = None if run == OPEN else 0
            keys.append((start << _POS_BITS) | p)
            if run != OPEN and end - start > longest[group]:
                longest[group] = end - start
        order = array("i")
        runs = []
        merged: dict[int, list[int]] = {}
        merged_longest: dict[int, int | None] = {}
        mask = (1 << _POS_BITS) - 1
        for (code, run), keys in sorted(keyed.items()):
            keys.sort()
            runs.append((code, run, len(order), len(order) + len(keys), longest[(code, run)]))
            order.extend(k & mask for k in keys)
            merged.setdefault(run, []).extend(keys)
            if run != OPEN:
                merged_longest[run] = max(merged_longest.get(run, 0), longest[(code, run)])
        for run, keys in sorted(merged.items()):
            keys.sort()  # sorted pieces: timsort merges them
            runs.append((-1, run, len(order), len(order) + len(keys), merged_longest.get(run)))
            order.extend(k & mask for k in keys)
        return cls(ids, starts, ends, groups, group_values, order, runs)

    def runs_table(self) -> list[tuple[int, int, int, int, int | None]]:
        """The runs as ``build`` made them (for a snapshot)."""
        out = [(code, run, lo, hi, longest) for code, runs in self.by_group.items()
               for run, (lo, hi, longest) in runs.items()]
        return out + [(-1, run, lo, hi, longest) for run, (lo, hi, longest) in self.all.items()]

    def position(self, record_id: int) -> int:
        """The row of ``record_id`` (-1: none)."""
        ids = self.ids
        p = bisect_left(ids, record_id)
        return p if p < len(ids) and ids[p] == record_id else -1

    def get(self, record_id: int) -> tuple[int, int | None, Any] | None:
        p = self.position(record_id)
        if p < 0 or self.starts[p] == NO_SPAN:
            return None
        end = self.ends[p]
        return self.starts[p], None if end == OPEN_END else end, self.group_values[self.groups[p]]

    def __len__(self) -> int:
        return self.count

    def query(self, qs: int | None, qe: int | None, source: Any, any_source: bool,
              after: tuple[int, int] | None, limit: int | None, hidden: set[int]) -> list[tuple[int, int]]:
        """``(start, id)`` of the rows overlapping ``[qs, qe]`` and not in ``hidden``, in order."""
        if any_source:
            runs = self.all
        else:
            code = self._code_of.get(source)
            runs = self.by_group.get(code, {}) if code is not None else {}
        starts, ends, ids, order = self.starts, self.ends, self.ids, self.order
        start_of = starts.__getitem__
        found: list[tuple[int, int]] = []
        for lo, hi, longest in runs.values():
            if qs is not None and longest is not None:
                lo = bisect_left(order, qs - longest, lo, hi, key=start_of)
            if after is not None:
                lo = bisect_right(order, after, lo, hi, key=lambda p: (starts[p], ids[p]))
            if qe is not None:
                hi = bisect_right(order, qe, lo, hi, key=start_of)
            taken = 0
            for i in range(lo, hi):
                p = order[i]
                if qs is not None and ends[p] < qs:
                    continue
                record_id = ids[p]
                if hidden and record_id in hidden:
                    continue
                found.append((starts[p], record_id))
                taken += 1
                if limit is not None and taken == limit:
                    break
        if len(runs) > 1:
            found.sort()
        if limit is not None and len(found) > limit:
            del found[limit:]
        return found

    def entries(self, hidden: set[int]) -> Iterator[Entry]:
        for p in range(len(self.starts)):
            start = self.starts[p]
            if start != NO_SPAN and self.ids[p] not in hidden:
                end = self.ends[p]
                yield self.ids[p], start, None if end == OPEN_END else end, self.group_values[self.groups[p]]


EMPTY_SPANS = FrozenSpans(array("q"), array("q"), array("q"), array("i"), [], array("i"), [])


class SpanIndex:
    """A :class:`FrozenSpans` with the changes since layered over it; the API of :class:`TimeIndex`.

    Changes go to a small :class:`TimeIndex`; a frozen entry that is replaced
    or removed is hidden (its id in ``hidden``).  Same threading rule as
    :class:`TimeIndex`.
    """

    def __init__(self, base: FrozenSpans = EMPTY_SPANS) -> None:
        self.base = base
        self.delta = TimeIndex()
        self.hidden: set[int] = set()

    def _in_base(self, record_id: int) -> bool:
        return record_id not in self.hidden and self.base.get(record_id) is not None

    def __len__(self) -> int:
        return len(self.base) - len(self.hidden) + len(self.delta)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self.delta or self._in_base(record_id)

    def add(self, record_id: int, start: int, end: int | None, source: Any) -> None:
        if end is not None and end < start:
            raise ValueError("end before start")
        if self._in_base(record_id):
            self.hidden.add(record_id)
        self.delta.add(record_id, start, end, source)

    def remove(self, record_id: int) -> bool:
        removed = self.delta.remove(record_id)
        if self._in_base(record_id):
            self.hidden.add(record_id)
            removed = True
        return removed

    def get(self, record_id: int) -> tuple[int, int | None, Any] | None:
        entry = self.delta.get(record_id)
        if entry is None and record_id not in self.hidden:
            entry = self.base.get(record_id)
        return entry

    def query(self, start: int | None = None, end: int | None = None, *, source: Any = None,
              any_source: bool = True, after: tuple[int, int] | None = None,
              limit: int | None = None) -> list[tuple[int, int]]:
        """As :meth:`TimeIndex.query`."""
        if start is not None and end is not None and end < start:
            return []
        found = self.base.query(start, end, source, any_source, after, limit, self.hidden)
        if len(self.delta):
            found.extend(self.delta.query(start, end, source=source, any_source=any_source, after=after,
                                          limit=limit))
            found.sort()
            if limit is not None and len(found) > limit:
                del found[limit:]
        return found

    def __iter__(self) -> Iterator[Entry]:
        yield from self.base.entries(self.hidden)
        yield from self.delta
