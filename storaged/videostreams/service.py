"""The videostreams catalogue: captured videos with a time span, a URL and a capture source.

Protocol
--------
*On disk.*  One record per videostream, ``<data>/videostreams/<id>.json``,
exactly the API's shape: ``{"id", "startTime", "endTime", "stream_url",
"capturesource"}`` (times RFC 3339 UTC, ``endTime`` null while a live stream
runs).  Ids are random integers in ``[2**40, 2**53)``.  Files are written by
:class:`storaged.store.records.RecordStore` (temp + fsync + rename + fsync of
the directory, per-record file lock; see its protocol).

*In memory.*  The record store's :class:`~storaged.store.catalogue.Catalogue`
(the same compact columns, span index and checked start-up snapshot as the
sessions family's, see there): every record as the memory keeps it (times
normalised to canonical RFC 3339), faceted and span-indexed by capture
source, built from the tree in a worker thread the first time the catalogue
is used (the app's start-up does that) and swapped in whole; it is a cache -
deleting it loses nothing.  Every write changes the file first and then the
memory (the store does both under the record's lock, inside one per-id
asyncio lock, striped), so the memory follows the files in the order the
writes happened; a failed write leaves the memory as it was.

*What a reader sees.*  GET and queries read the memory: a write is visible
as soon as its request answers, never before its file is durable.

*What a crash leaves.*  What RecordStore leaves (at worst a stray temp file);
the memory is rebuilt from the files on the next start.  A record edited by
hand is seen after a restart (edited in place, not renamed: once the
start-up verification has run, see :mod:`storaged.store.snapshot`); an
unreadable one is skipped with a warning.
"""

from __future__ import annotations

from bisect import bisect_right

import asyncio
import json
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple

from storaged.errors import BadRequest, Conflict, NotFound
from storaged.schema import documents, nullable, object_schema, schema_of
from storaged.store.catalogue import Catalogue
from storaged.store.layout import Layout
from storaged.store.records import MAX_SAFE_INT, RecordStore
from storaged.videostreams import times

log = logging.getLogger("storaged.videostreams")

KIND = "videostreams"
FIELDS = ("startTime", "endTime", "stream_url", "capturesource")
MAX_URL_LENGTH = 8192
_CURSOR = re.compile(r"^(-?[0-9]{1,20})\.([0-9]{1,16})$")
_LOCK_STRIPES = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_decode = json.JSONDecoder().raw_decode
Row = tuple[int, str, "str | None", str, "int | None"]
# A record file exactly as RecordStore writes it (write_json: indent 2, sorted
# keys) with canonical times and a URL that needs no JSON escapes; anything
# else takes the json module and the full checks.
_OWN_RECORD = re.compile(
    r'\{\n  "capturesource": (null|[1-9][0-9]{0,15}),\n'
    r'  "endTime": (null|"' + times.CANONICAL_PATTERN + r'"),\n'
    r'  "id": ([1-9][0-9]{0,15}),\n'
    r'  "startTime": "(' + times.CANONICAL_PATTERN + r')",\n'
    r'  "stream_url": "([^"\\\x00-\x1f\x7f]{1,8192})"\n\}\n')

TimeLike = datetime | str | int | None


class QueryPage(NamedTuple):
    items: list[dict[str, Any]]
    next_cursor: str | None  # pass back as ``cursor`` for the next page; None = no more
    total: int = 0  # matches of the filters, whatever the page (OpenFish's envelope `total`)


class VideostreamCatalogue:
    """Create, read, query, update, delete videostreams; start and end live ones.

    Times may be given as aware datetimes or RFC 3339 strings (``query``
    also takes integer microseconds since the epoch); records always carry
    RFC 3339 UTC strings, ``endTime`` None while a stream is live.
    Errors are :mod:`storaged.errors` (BadRequest 400 naming the field in its
    message and in ``extra["field"]``, NotFound 404, Conflict 409).
    """

    def __init__(self, layout: Layout) -> None:
        self.memory = Catalogue(KIND, ("capturesource",), span=_span, span_group="capturesource")
        self.store = RecordStore(layout, KIND, ids="random53", catalogue=self.memory, parse=self._parse_file)
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self.settled = asyncio.Event()

    # -- loading -------------------------------------------------------------
    async def load(self) -> None:
        """Build the memory from the tree once (in a thread); later calls return at once."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            t0 = time.monotonic()
            await self.store.load()
            self._loaded = True
            skipped = len(self.memory.damaged)
            log.info("videostreams: loaded %d records in %.2fs%s", len(self.memory), time.monotonic() - t0,
                     f" ({skipped} unreadable skipped)" if skipped else "")

    async def load_then_check(self) -> None:
        """The start-up: load, then check a trusted snapshot against the tree; ``settled`` is set once
        both are over, whatever their outcome (the janitor's references wait for it)."""
        try:
            await self.load()
            await self.check_snapshot()
        finally:
            self.settled.set()

    def _parse_file(self, record_id: int, data: bytes) -> dict[str, Any]:
        """A record file as the memory keeps it (ValueError: not a videostream record)."""
        text = data.decode()
        parsed = _parse_own(text, record_id)
        if parsed is not None:
            return _as_dict(parsed[0])
        try:
            record, _start, _end = self._from_disk(_decode(text)[0], record_id)
        except BadRequest as exc:
            raise ValueError(exc.message) from None
        return record

    async def check_snapshot(self) -> int:
        """After a start that trusted a snapshot: compare the tree with the memory (see RecordStore)."""
        return await self.store.check_snapshot()

    async def close(self) -> None:
        """At a clean stop (nothing writes any more): a snapshot for the next start."""
        if self._loaded:
            await self.store.close()

    @staticmethod
    def _from_disk(raw: Any, record_id: int) -> tuple[dict[str, Any], int, int | None]:
        """A stored record, checked and normalised, with its span in microseconds."""
        if not isinstance(raw, dict) or raw.get("id") != record_id:
            raise ValueError("not a videostream record with the id of its file name")
        start_text, end_text = raw.get("startTime"), raw.get("endTime")
        start = times.parse_canonical(start_text)
        if start is None:
            start = times.parse_us(start_text, "startTime")
            start_text = times.format_us(start)
        end = None
        if end_text is not None:
            end = times.parse_canonical(end_text)
            if end is None:
                end = times.parse_us(end_text, "endTime")
                end_text = times.format_us(end)
            if end <= start:
                raise ValueError("endTime not after startTime")
        record = {"id": record_id, "startTime": start_text, "endTime": end_text,
                  "stream_url": _check_url("stream_url", raw.get("stream_url")),
                  "capturesource": _check_source("capturesource", raw.get("capturesource"))}
        return record, start, end

    # -- reading -------------------------------------------------------------
    async def get(self, id: int | str) -> dict[str, Any]:
        await self.load()
        record_id = self.parse_id(id)
        record = self.memory.get(record_id)
        if record is None:
            raise NotFound(f"videostream {record_id} not found")
        return _ordered(record)

    async def query(self, start: TimeLike = None, end: TimeLike = None, capturesource: int | None = None,
                    limit: int | None = None, cursor: str | None = None, offset: int = 0) -> QueryPage:
        """Every videostream overlapping ``[start, end]`` (bounds included; None = open), by start.

        Live streams (no end yet) overlap every span that reaches their start.
        ``capturesource`` None means any source.  ``limit`` None answers all.
        The page starts ``offset`` matches after ``cursor`` (or the first match);
        ``total`` counts every match of the filters.
        """
        await self.load()
        qs = None if start is None else _as_us(start, "timespan[start]")
        qe = None if end is None else _as_us(end, "timespan[end]")
        if qs is not None and qe is not None and qe < qs:
            raise BadRequest("timespan[end] must not be before timespan[start]", field="timespan[end]")
        source = None if capturesource is None else _check_source("capturesource", capturesource)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise BadRequest("limit must be a positive integer", field="limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadRequest("offset must be a non-negative integer", field="offset")
        after = None if cursor is None else _parse_cursor(cursor)
        memory = self.memory
        if qs is None and qe is None and limit is not None:
            # A page of everything (or of one source): every record has a span, so the held counts are
            # the total and only the page (and one more, for the cursor) is taken from the span runs;
            # listing every match took seconds at a million records.
            total = len(memory) if source is None else memory.count("capturesource", source)
            found = memory.spans(None, None, group=source, any_group=source is None, after=after,
                                 limit=offset + limit + 1)
            page = found[offset:offset + limit]
            next_cursor = f"{page[-1][0]}.{page[-1][1]}" if page and len(found) > offset + limit else None
            return QueryPage([_ordered(memory.get(record_id)) for _, record_id in page], next_cursor, total)
        # Every match (keys only, cheap): the envelope's total counts them all.
        found = memory.spans(qs, qe, group=source, any_group=source is None)
        total = len(found)
        begin = 0 if after is None else bisect_right(found, after)
        begin += offset
        stop = len(found) if limit is None else begin + limit
        page = found[begin:stop]
        next_cursor = f"{page[-1][0]}.{page[-1][1]}" if page and stop < len(found) else None
        return QueryPage([_ordered(memory.get(record_id)) for _, record_id in page], next_cursor, total)

    # -- writing -------------------------------------------------------------
    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A new videostream; ``stream_url`` and ``startTime`` required, ``endTime`` None = still going."""
        await self.load()
        change = _check_fields(fields, FIELDS)
        for name in ("stream_url", "startTime"):
            if change.get(name) is None:
                raise BadRequest(f"{name} is required", field=name)
        start, end = change["startTime"], change.get("endTime")
        _check_span(start, end)
        record = _render(0, start, end, change["stream_url"], change.get("capturesource"))
        del record["id"]  # RecordStore draws it
        stored = await self.store.create(record)
        return dict(stored)

    async def update(self, id: int | str, fields: dict[str, Any]) -> dict[str, Any]:
        """Change some of ``startTime``, ``endTime`` (None reopens), ``stream_url``, ``capturesource``."""
        await self.load()
        record_id = self.parse_id(id)
        change = _check_fields(fields, FIELDS)
        if "startTime" in change and change["startTime"] is None:
            raise BadRequest("startTime cannot be null", field="startTime")

        def apply(current: dict[str, Any]) -> dict[str, Any]:
            record, start, end = self._from_disk(current, record_id)
            start = change.get("startTime", start)
            end = change.get("endTime", end)
            _check_span(start, end)
            return _render(record_id, start, end, change.get("stream_url", record["stream_url"]),
                           change.get("capturesource", record["capturesource"]))

        return await self._write(record_id, apply)

    async def delete(self, id: int | str) -> None:
        await self.load()
        record_id = self.parse_id(id)
        async with self._lock_for(record_id):
            try:
                await self.store.delete(record_id)
            except NotFound:
                raise NotFound(f"videostream {record_id} not found") from None

    async def start_live(self, stream_url: str, capturesource: int | None = None,
                         start: TimeLike = None) -> dict[str, Any]:
        """A new videostream starting now (or at ``start``) with no end yet."""
        fields: dict[str, Any] = {"stream_url": stream_url, "capturesource": capturesource,
                                  "startTime": datetime.now(timezone.utc) if start is None else start}
        return await self.create(fields)

    async def end_live(self, id: int | str, end: TimeLike = None) -> dict[str, Any]:
        """Set the end of a live stream to now (or ``end``); Conflict if it has already ended."""
        await self.load()
        record_id = self.parse_id(id)
        end_us = None if end is None else times.parse_us(end, "endTime")

        def apply(current: dict[str, Any]) -> dict[str, Any]:
            record, start, old_end = self._from_disk(current, record_id)
            if old_end is not None:
                raise Conflict(f"videostream {record_id} has already ended (endTime {record['endTime']})")
            new_end = times.now_us() if end_us is None else end_us
            _check_span(start, new_end)
            return _render(record_id, start, new_end, record["stream_url"], record["capturesource"])

        return await self._write(record_id, apply)

    async def _write(self, record_id: int, apply) -> dict[str, Any]:
        async with self._lock_for(record_id):
            try:
                new = await self.store.update(record_id, apply)
            except NotFound:
                raise NotFound(f"videostream {record_id} not found") from None
            return _ordered(new)

    # -- memory --------------------------------------------------------------
    def _lock_for(self, record_id: int) -> asyncio.Lock:
        return self._locks[record_id % _LOCK_STRIPES]

    def __len__(self) -> int:
        return len(self.memory)

    def parse_id(self, raw: Any) -> int:
        try:
            return self.store.parse_id(raw, "videostream id")
        except BadRequest as exc:
            raise BadRequest(exc.message, field="id") from None


def _parse_own(text: str, record_id: int) -> tuple[Row, int, int | None] | None:
    """The row and span of a record file in this module's own format, else None.

    Start-up runs this 100k times: one regex instead of a JSON parse and
    per-field checks halves the time (see BENCHMARKS.md).
    """
    m = _OWN_RECORD.fullmatch(text)
    if m is None:
        return None
    (source_text, end_text, e_day, e_hour, e_min, e_sec, e_frac, id_text, start_text,
     s_day, s_hour, s_min, s_sec, s_frac, url) = m.groups()
    if int(id_text) != record_id or not url.strip():
        return None
    start = times.canonical_us(s_day, s_hour, s_min, s_sec, s_frac)
    if start is None:
        return None
    if end_text == "null":
        end, end_text = None, None
    else:
        end = times.canonical_us(e_day, e_hour, e_min, e_sec, e_frac)
        if end is None or end <= start:
            return None
        end_text = end_text[1:-1]
    source = None if source_text == "null" else int(source_text)
    if source is not None and source > MAX_SAFE_INT:
        return None
    return (record_id, start_text, end_text, url, source), start, end


def _span(record: dict[str, Any]) -> tuple[int, int | None]:
    """A held record's span in microseconds (its times are canonical: see ``_parse_file``)."""
    start = times.parse_canonical(record["startTime"])
    end = record["endTime"]
    return start, None if end is None else times.parse_canonical(end)


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    """The API's field order (the memory keeps sorted keys)."""
    return {name: record[name] for name in ("id", "startTime", "endTime", "stream_url", "capturesource")}


def _row(record: dict[str, Any]) -> Row:
    return (record["id"], record["startTime"], record["endTime"], record["stream_url"], record["capturesource"])


def _as_dict(row: Row) -> dict[str, Any]:
    return {"id": row[0], "startTime": row[1], "endTime": row[2], "stream_url": row[3], "capturesource": row[4]}

# -- validation ---------------------------------------------------------------
def _render(record_id: int, start: int, end: int | None, url: str, source: int | None) -> dict[str, Any]:
    return {"id": record_id, "startTime": times.format_us(start),
            "endTime": None if end is None else times.format_us(end),
            "stream_url": url, "capturesource": source}


def _as_us(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return times.parse_us(value, what)


@documents({"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH, "pattern": r"^(?=.*\S)[^\x00-\x1f\x7f]*$"})
def _check_url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("stream_url must be a non-empty string", field="stream_url")
    if len(value) > MAX_URL_LENGTH or _CONTROL.search(value):
        raise BadRequest(f"stream_url must be at most {MAX_URL_LENGTH} characters without control characters",
                         field="stream_url")
    return value


@documents({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_SAFE_INT})
def _check_source(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SAFE_INT:
        raise BadRequest("capturesource must be a positive integer id below 2^53, or null", field="capturesource")
    return value


def _check_fields(fields: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Checked values of the fields present (times as microseconds); refuses unknown and read-only ones."""
    if not isinstance(fields, dict):
        raise BadRequest("the body must be a JSON object")
    for name in fields:
        if name == "id":
            raise BadRequest("id is read-only", field="id")
        if name not in allowed:
            raise BadRequest(f"unknown field: {name}", field=str(name))
    return {name: FIELD_CHECKS[name](name, fields[name]) for name in FIELD_CHECKS if name in fields}


def body_schema(allowed: tuple[str, ...] = FIELDS, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema of a body ``_check_fields`` accepts with these fields (OpenAPI reads it)."""
    return object_schema({name: schema_of(FIELD_CHECKS[name]) for name in allowed}, required)




@documents({"type": "string", "minLength": 1, "description": "RFC 3339 date-time with an offset (Z or ±hh:mm)"})
def _check_time(name: str, value: Any) -> int | None:
    """Microseconds; null is passed through (the caller decides whether it may be)."""
    return None if value is None else times.parse_us(value, name)


@documents(nullable(schema_of(_check_time)))
def _check_end_time(name: str, value: Any) -> int | None:
    """endTime: null means no end yet."""
    return _check_time(name, value)


TIME_SCHEMA = schema_of(_check_time)
FIELD_CHECKS = {"stream_url": _check_url, "capturesource": _check_source, "startTime": _check_time,
                "endTime": _check_end_time}

RECORD_SCHEMA = object_schema({"id": {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INT},
                               "startTime": schema_of(_check_time), "endTime": schema_of(_check_end_time),
                               "stream_url": schema_of(_check_url), "capturesource": schema_of(_check_source)},
                              ("id", "startTime", "endTime", "stream_url", "capturesource"), closed=False)


def _check_span(start: int, end: int | None) -> None:
    if end is not None and end <= start:
        raise BadRequest("endTime must be after startTime", field="endTime")


def _parse_cursor(raw: Any) -> tuple[int, int]:
    m = _CURSOR.match(raw) if isinstance(raw, str) else None
    if not m:
        raise BadRequest("malformed cursor: pass back the next cursor of the previous page", field="cursor")
    return int(m.group(1)), int(m.group(2))

