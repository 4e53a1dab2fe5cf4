"""The interval index agrees with a brute-force scan; time parsing and formatting round-trip."""

from __future__ import annotations

import random
from array import array

import pytest

from storaged.errors import BadRequest
from storaged.videostreams import times
from storaged.store.timeindex import NO_SPAN, OPEN_END, FrozenSpans, SpanIndex, TimeIndex

HOUR = 3600 * 1_000_000
SPAN = 60 * 24 * HOUR


def random_entries(rng: random.Random, n: int, sources: list) -> list[tuple]:
    entries, used = [], set()
    for _ in range(n):
        rid = rng.randrange(1, 2**53)
        while rid in used:
            rid = rng.randrange(1, 2**53)
        used.add(rid)
        start = rng.randrange(-HOUR, SPAN)  # a few before the epoch too
        if rng.random() < 0.2:
            start = rng.randrange(0, SPAN // HOUR) * HOUR  # shared starts: ties ordered by id
        kind = rng.random()
        if kind < 0.03:
            end = None  # live
        elif kind < 0.06:
            end = start + rng.randrange(1, 40 * 24 * HOUR)  # very long
        else:
            end = start + rng.randrange(1, 6 * HOUR)
        entries.append((rid, start, end, rng.choice(sources)))
    return entries


def brute(entries, qs, qe, source, any_source):
    out = [(start, rid) for rid, start, end, src in entries
           if (any_source or src == source)
           and (qe is None or start <= qe)
           and (qs is None or end is None or end >= qs)]
    return sorted(out)


def random_query(rng: random.Random, sources: list):
    qs = rng.randrange(-2 * HOUR, SPAN + HOUR)
    qe = qs + rng.choice([0, 1, 60_000_000, HOUR, 24 * HOUR, 10 * 24 * HOUR])
    r = rng.random()
    if r < 0.1:
        qs = None
    elif r < 0.2:
        qe = None
    elif r < 0.25:
        qs = qe = None
    any_source = rng.random() < 0.3
    return qs, qe, None if any_source else rng.choice(sources), any_source


def test_index_agrees_with_brute_force_on_random_records_and_queries():
    rng = random.Random(53)
    sources = [None] + [rng.randrange(1, 2**53) for _ in range(9)]
    entries = random_entries(rng, 10_000, sources)
    index = TimeIndex.build(entries[:6000])
    for entry in entries[6000:]:  # the rest one by one, as writes do
        index.add(*entry)
    assert len(index) == 10_000
    nonempty = 0
    for _ in range(1000):
        qs, qe, source, any_source = random_query(rng, sources)
        expected = brute(entries, qs, qe, source, any_source)
        got = index.query(qs, qe, source=source, any_source=any_source)
        assert got == expected, (qs, qe, source, any_source)
        nonempty += bool(expected)
    assert nonempty > 500  # the queries really exercise matches


def test_index_pages_with_cursor_equal_the_whole_answer():
    rng = random.Random(7)
    sources = [1, 2, 3]
    entries = random_entries(rng, 3000, sources)
    index = TimeIndex.build(entries)
    for _ in range(200):
        qs, qe, source, any_source = random_query(rng, sources)
        whole = index.query(qs, qe, source=source, any_source=any_source)
        limit = rng.choice([1, 3, 50])
        walked, after = [], None
        while True:
            page = index.query(qs, qe, source=source, any_source=any_source, after=after, limit=limit)
            walked += page
            if len(page) < limit:
                break
            after = page[-1]
        assert walked == whole


def test_index_follows_updates_and_removals():
    rng = random.Random(11)
    sources = [None, 5, 6]
    entries = {e[0]: e for e in random_entries(rng, 2000, sources)}
    index = TimeIndex.build(entries.values())
    for step in range(2000):
        rid = rng.choice(list(entries))
        action = rng.random()
        if action < 0.3:
            assert index.remove(rid)
            del entries[rid]
            assert not index.remove(rid)
        else:
            start = rng.randrange(0, SPAN)
            end = None if action < 0.4 else start + rng.randrange(1, 3 * HOUR)
            entries[rid] = (rid, start, end, rng.choice(sources))
            index.add(*entries[rid])  # replaces, as a PATCH does
        if step % 50 == 0:
            for _ in range(20):
                qs, qe, source, any_source = random_query(rng, sources)
                assert index.query(qs, qe, source=source, any_source=any_source) == \
                    brute(entries.values(), qs, qe, source, any_source)
    assert len(index) == len(entries)


def frozen(entries: list[tuple], sources: list, rows_without_span: int = 0) -> FrozenSpans:
    """The compact index a start-up (or a snapshot) builds from a table whose ids are sorted."""
    rows = sorted([(rid, start, end, src) for rid, start, end, src in entries]
                  + [(-(n + 1), None, None, None) for n in range(rows_without_span)])  # records without a span
    code = {value: c for c, value in enumerate(sources)}
    return FrozenSpans.build(
        [r[0] for r in rows], array("q", [NO_SPAN if r[1] is None else r[1] for r in rows]),
        array("q", [OPEN_END if r[2] is None else r[2] for r in rows]),
        array("i", [code[r[3]] for r in rows]), list(sources))


def answers(index, qs, qe, source, any_source, after=None, limit=None):
    return index.query(qs, qe, source=source, any_source=any_source, after=after, limit=limit)


def brute_page(entries, qs, qe, source, any_source, after, limit):
    if qs is not None and qe is not None and qe < qs:
        return []
    whole = [k for k in brute(entries, qs, qe, source, any_source) if after is None or k > after]
    return whole if limit is None else whole[:limit]


def test_the_compact_index_with_writes_layered_over_it_agrees_with_brute_force():
    """The events/videostreams index at a million records: frozen columns (from a start-up or a snapshot),
    the writes since in a small TimeIndex over them, replaced and deleted frozen rows hidden.  Every query
    form (either bound open, a source or none, an unknown source, a cursor, a limit, an empty window) is
    checked against a scan, and so is every page of a walk."""
    rng = random.Random(2024)
    sources = [None, 1, 2, 3]
    base = random_entries(rng, 3000, sources)
    index = SpanIndex(frozen(base, sources, rows_without_span=50))
    entries = {e[0]: e for e in base}
    assert len(index) == 3000
    for query_no in range(600):
        if query_no >= 100:  # first the frozen rows alone, then with writes layered over them
            for _ in range(5):
                action = rng.random()
                rid = rng.choice(list(entries))
                if action < 0.3:
                    assert index.remove(rid) and rid not in index
                    del entries[rid]
                    assert not index.remove(rid)
                else:
                    if action < 0.6:
                        rid = rng.randrange(1, 2**53)  # a new record
                    (new,) = random_entries(rng, 1, sources)
                    entries[rid] = (rid, *new[1:])
                    index.add(*entries[rid])
                    assert index.get(rid) == entries[rid][1:]
        qs, qe, source, any_source = random_query(rng, sources + [99])
        if rng.random() < 0.05:
            qs, qe = 5 * HOUR, 4 * HOUR  # an empty window
        whole = brute_page(entries.values(), qs, qe, source, any_source, None, None)
        assert answers(index, qs, qe, source, any_source) == whole, (qs, qe, source, any_source)
        limit = rng.choice([None, 1, 2, 7])
        after = rng.choice(whole) if whole and rng.random() < 0.7 else None
        assert answers(index, qs, qe, source, any_source, after, limit) == \
            brute_page(entries.values(), qs, qe, source, any_source, after, limit), (qs, qe, source, after, limit)
        if query_no % 20 == 0 and whole:
            walked, after = [], None
            while True:
                page = answers(index, qs, qe, source, any_source, after, 3)
                walked += page
                if len(page) < 3:
                    break
                after = page[-1]
            assert walked == whole
    assert len(index) == len(entries)
    assert sorted(index) == sorted(entries.values())
    assert all(index.get(rid) == entry[1:] for rid, entry in entries.items()), "get of a frozen or written row"
    assert all(rid in index for rid in entries)


def test_the_compact_index_answers_get_and_len_and_skips_rows_without_a_span():
    rows = [(10, 100, 200, "cam-a"), (20, 150, None, "cam-b"), (30, 300, 300, None)]
    spans = frozen(rows, [None, "cam-a", "cam-b"], rows_without_span=2)
    assert len(spans) == 3
    first = frozen(rows, [None, "cam-a", "cam-b"])  # the first row, at position 0, has a span
    assert first.position(10) == 0 and first.get(10) == (100, 200, "cam-a") and first.position(11) == -1
    with pytest.raises(ValueError, match="end before start"):
        SpanIndex(first).add(40, 500, 499, None)
    with pytest.raises(ValueError, match="end before start"):
        TimeIndex().add(40, 500, 499, None)
    assert spans.get(10) == (100, 200, "cam-a") and spans.get(20) == (150, None, "cam-b")
    assert spans.get(30) == (300, 300, None)
    assert spans.get(-1) is None and spans.get(15) is None  # a row without a span; no such row
    index = SpanIndex(spans)
    assert answers(index, None, None, "cam-b", False) == [(150, 20)]
    assert answers(index, None, None, None, False) == [(300, 30)]
    assert answers(index, None, None, "cam-c", False) == []
    assert answers(index, 250, None, None, True) == [(150, 20), (300, 30)]
    assert answers(index, 201, 299, None, True) == [(150, 20)]
    rebuilt = FrozenSpans(spans.ids, spans.starts, spans.ends, spans.groups, spans.group_values, spans.order,
                          spans.runs_table())  # as a snapshot loads it
    assert [answers(SpanIndex(rebuilt), qs, None, None, True) for qs in (None, 180, 250)] == \
        [answers(index, qs, None, None, True) for qs in (None, 180, 250)]
    # Exactly two runs whose rows interleave (1 µs long ones, a live one between them): merged in order.
    two = SpanIndex(frozen([(1, 100, 101, None), (2, 150, None, None), (3, 200, 201, None)], [None]))
    assert answers(two, None, None, None, True) == [(100, 1), (150, 2), (200, 3)]
    assert answers(two, None, None, None, False, limit=2) == [(100, 1), (150, 2)]
    with pytest.raises(ValueError, match="columns of different lengths"):
        FrozenSpans(spans.ids, spans.starts, spans.ends, array("i"), spans.group_values, spans.order, [])
    with pytest.raises(ValueError, match="a run outside the order column"):
        FrozenSpans(spans.ids, spans.starts, spans.ends, spans.groups, spans.group_values, spans.order,
                    [(-1, 0, 0, len(spans.order) + 1, None)])


@pytest.mark.parametrize("text,expected", [
    ("2023-06-07T08:00:00Z", "2023-06-07T08:00:00Z"),
    ("2023-06-07T08:00:00.00Z", "2023-06-07T08:00:00Z"),
    ("2023-06-07T08:00:00.1z", "2023-06-07T08:00:00.100000Z"),
    ("2023-06-07 10:00:00+02:00", "2023-06-07T08:00:00Z"),
    ("2023-06-07T00:30:00-08:00", "2023-06-07T08:30:00Z"),
    ("2023-06-07T08:00:00.1234567891Z", "2023-06-07T08:00:00.123456Z"),
    ("1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59.500000Z"),
    ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00Z"),
])
def test_rfc3339_in_utc_z_out(text, expected):
    us = times.parse_us(text, "startTime")
    assert times.format_us(us) == expected
    assert times.parse_us(expected, "startTime") == us
    assert times.parse_canonical(expected) == us


@pytest.mark.parametrize("text", ["2023-06-07", "2023-06-07T08:00:00", "2023-06-07T08:00Z", "2023-13-01T00:00:00Z",
                                  "2023-06-07T24:00:00Z", "2023-06-07T08:00:00+25:00", "2023-06-07T08:00:00 02:00",
                                  " 2023-06-07T08:00:00Z", "", "now"])
def test_malformed_times_name_the_field(text):
    with pytest.raises(BadRequest) as err:
        times.parse_us(text, "endTime")
    assert "endTime" in err.value.message and err.value.extra["field"] == "endTime"
