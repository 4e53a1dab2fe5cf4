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
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Iterable, Iterator

ID_BITS = 53
ID_MASK = (1 << ID_BITS) - 1
OPEN = -1  # run key of entries without an end
CLASS_BITS = 3  # a run holds durations within a factor of 2**3

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
