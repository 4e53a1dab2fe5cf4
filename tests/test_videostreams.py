"""Videostreams catalogue over HTTP: CRUD, live streams, overlap queries, validation, pagination, restart."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from storaged.videostreams.api import VIDEOSTREAMS
from storaged.videostreams.provider import VideostreamsProvider
from storaged.videostreams.service import VideostreamCatalogue
from storaged.app import create_app
from storaged.errors import Conflict
from storaged.ops.api import JANITOR
from storaged.provider import Scan
from storaged.store.layout import Layout

API = "/api/v1/videostreams"
DAY = "2023-06-07"


def at(hhmm: str) -> str:
    return f"{DAY}T{hhmm}:00Z"


async def create(client, **fields):
    resp = await client.post(API, json=fields)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def query(client, **params):
    resp = await client.get(API, params=params)
    body = await resp.json()
    assert resp.status == 200, body
    assert set(body) == {"results", "offset", "limit", "total", "next_cursor"}, body
    return body["results"]


def ids(records):
    return [r["id"] for r in records]


@pytest.fixture
async def diagram(client):
    """The contract's five streams (2pm..10pm), in creation order 1..5."""
    spans = [("14:30", "17:00"), ("17:00", "19:00"), ("18:00", "21:00"), ("14:15", "21:00"), ("14:05", "15:00")]
    out = []
    for n, (start, end) in enumerate(spans, 1):
        out.append(await create(client, stream_url=f"http://vid.example/get?id={n}", capturesource=6636835711221760,
                                startTime=at(start), endTime=at(end)))
    return out


async def test_contract_diagram_query_returns_streams_1_to_4_not_5(client, diagram):
    found = await query(client, **{"timespan[start]": at("16:00"), "timespan[end]": at("19:30")})
    s1, s2, s3, s4, s5 = diagram
    assert ids(found) == [s4["id"], s1["id"], s2["id"], s3["id"]]  # by start time
    assert s5["id"] not in ids(found)
    assert found[1] == s1


async def test_create_answers_record_with_id_and_get_returns_it(client, data_dir):
    body = await create(client, stream_url="https://www.youtube.com/watch?v=abcdefghijk",
                        capturesource=5661542255165440, startTime="2023-06-07T08:00:00.00Z",
                        endTime="2023-06-07T16:30:00.00Z")
    assert 1 <= body["id"] < 2**53
    assert body == {"id": body["id"], "startTime": "2023-06-07T08:00:00Z", "endTime": "2023-06-07T16:30:00Z",
                    "stream_url": "https://www.youtube.com/watch?v=abcdefghijk", "capturesource": 5661542255165440}
    resp = await client.get(f"{API}/{body['id']}")
    assert resp.status == 200 and await resp.json() == body
    assert json.loads((data_dir / "videostreams" / f"{body['id']}.json").read_text()) == body


async def test_times_with_offsets_and_fractions_come_back_utc_z(client):
    body = await create(client, stream_url="u", startTime="2023-06-07T10:00:00.123456789+02:00",
                        endTime="2023-06-07t09:30:00.5-00:30")
    assert body["startTime"] == "2023-06-07T08:00:00.123456Z"
    assert body["endTime"] == "2023-06-07T10:00:00.500000Z"
    assert body["capturesource"] is None


async def test_open_ended_spans(client, diagram):
    s1, s2, s3, s4, s5 = diagram
    live = await create(client, stream_url="live", startTime=at("20:00"))
    assert live["endTime"] is None
    after_7pm = await query(client, **{"timespan[start]": at("19:30")})
    assert ids(after_7pm) == [s4["id"], s3["id"], live["id"]]
    before_3pm = await query(client, **{"timespan[end]": at("14:20")})
    assert ids(before_3pm) == [s5["id"], s4["id"]]
    far_future = await query(client, **{"timespan[start]": "2030-01-01T00:00:00Z"})
    assert ids(far_future) == [live["id"]]  # a live stream has no end yet
    everything = await query(client)
    assert ids(everything) == [s5["id"], s4["id"], s1["id"], s2["id"], s3["id"], live["id"]]


async def test_bounds_touching_a_stream_count_as_overlap(client, diagram):
    s1, s2, *_ = diagram
    found = await query(client, **{"timespan[start]": at("19:00"), "timespan[end]": at("19:00")})
    assert s2["id"] in ids(found)
    found = await query(client, **{"timespan[start]": at("17:00"), "timespan[end]": at("17:00")})
    assert {s1["id"], s2["id"]} <= set(ids(found))


async def test_query_time_with_unescaped_plus_offset(client, diagram):
    s1, s2, s3, s4, s5 = diagram
    resp = await client.get(f"{API}?timespan[start]={DAY}T18:00:00+02:00&timespan[end]={DAY}T19:30:00+02:00")
    assert resp.status == 200
    assert ids((await resp.json())["results"]) == [s4["id"], s1["id"], s2["id"]]  # 16:00Z..17:30Z


async def test_capturesource_filter(client):
    a = await create(client, stream_url="a", capturesource=11, startTime=at("10:00"), endTime=at("11:00"))
    b = await create(client, stream_url="b", capturesource=22, startTime=at("10:30"), endTime=at("11:30"))
    c = await create(client, stream_url="c", capturesource=11, startTime=at("12:00"), endTime=at("13:00"))
    assert ids(await query(client, capturesource="11")) == [a["id"], c["id"]]
    assert ids(await query(client, capturesource="22", **{"timespan[start]": at("11:00")})) == [b["id"]]
    assert ids(await query(client, capturesource="11", **{"timespan[start]": at("11:10"),
                                                            "timespan[end]": at("11:50")})) == []
    assert await query(client, capturesource="33") == []


async def test_live_start_and_end(client, data_dir):
    before = datetime.now(timezone.utc)
    resp = await client.post(f"{API}/live", json={"stream_url": "https://www.youtube.com/watch?v=live",
                                                  "capturesource": 5970800033136640})
    live = await resp.json()
    assert resp.status == 200, live
    assert live["endTime"] is None and live["capturesource"] == 5970800033136640
    started = datetime.fromisoformat(live["startTime"])
    assert before - timedelta(seconds=1) <= started <= datetime.now(timezone.utc)
    assert live["id"] in ids(await query(client, **{"timespan[start]": "2100-01-01T00:00:00Z"}))

    resp = await client.patch(f"{API}/{live['id']}/live")
    ended = await resp.json()
    assert resp.status == 200, ended
    assert ended["startTime"] == live["startTime"]
    assert datetime.fromisoformat(ended["endTime"]) > started
    assert json.loads((data_dir / "videostreams" / f"{live['id']}.json").read_text()) == ended
    assert live["id"] not in ids(await query(client, **{"timespan[start]": "2100-01-01T00:00:00Z"}))

    resp = await client.patch(f"{API}/{live['id']}/live")
    assert resp.status == 409
    assert "already ended" in (await resp.json())["error_message"]
    assert (await (await client.get(f"{API}/{live['id']}")).json()) == ended


async def test_live_start_needs_stream_url_and_refuses_end_time(client):
    resp = await client.post(f"{API}/live", json={"capturesource": 5})
    assert resp.status == 400 and "stream_url" in (await resp.json())["error_message"]
    resp = await client.post(f"{API}/live", json={"stream_url": "u", "endTime": at("10:00")})
    assert resp.status == 400 and "endTime" in (await resp.json())["error_message"]
    assert await query(client) == []


async def test_patch_changes_stream_url_and_keeps_the_rest(client, data_dir):
    rec = await create(client, stream_url="http://old", capturesource=7, startTime=at("08:00"), endTime=at("09:00"))
    resp = await client.patch(f"{API}/{rec['id']}", json={"stream_url": "http://newurl.com.au/hello"})
    new = await resp.json()
    assert resp.status == 200
    assert new == {**rec, "stream_url": "http://newurl.com.au/hello"}
    assert await (await client.get(f"{API}/{rec['id']}")).json() == new
    assert json.loads((data_dir / "videostreams" / f"{rec['id']}.json").read_text()) == new


async def test_patch_times_moves_the_stream_in_queries(client):
    rec = await create(client, stream_url="u", startTime=at("08:00"), endTime=at("09:00"))
    resp = await client.patch(f"{API}/{rec['id']}", json={"startTime": at("20:00"), "endTime": at("21:00")})
    assert resp.status == 200
    assert await query(client, **{"timespan[end]": at("10:00")}) == []
    assert ids(await query(client, **{"timespan[start]": at("20:30")})) == [rec["id"]]
    resp = await client.patch(f"{API}/{rec['id']}", json={"endTime": None})  # reopened: live again
    assert (await resp.json())["endTime"] is None
    assert ids(await query(client, **{"timespan[start]": "2099-01-01T00:00:00Z"})) == [rec["id"]]


async def test_delete_removes_record_and_file(client, data_dir):
    rec = await create(client, stream_url="u", startTime=at("08:00"), endTime=at("09:00"))
    resp = await client.delete(f"{API}/{rec['id']}")
    assert resp.status == 200
    assert (await client.get(f"{API}/{rec['id']}")).status == 404
    assert not (data_dir / "videostreams" / f"{rec['id']}.json").exists()
    assert await query(client) == []
    assert (await client.delete(f"{API}/{rec['id']}")).status == 404


@pytest.mark.parametrize("method,suffix,body", [
    ("GET", "", None), ("PATCH", "", {"stream_url": "x"}), ("DELETE", "", None), ("PATCH", "/live", None)])
async def test_unknown_id_is_404(client, method, suffix, body):
    await create(client, stream_url="u", startTime=at("08:00"))
    resp = await client.request(method, f"{API}/4586454965551104{suffix}", json=body)
    assert resp.status == 404
    assert "4586454965551104" in (await resp.json())["error_message"]
    assert len(await query(client)) == 1


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("bad", ["abc", "0", "-5", str(2**53), "1.5"])
async def test_malformed_id_is_400_naming_it(client, method, bad):
    resp = await client.request(method, f"{API}/{bad}", json={} if method == "PATCH" else None)
    body = await resp.json()
    assert resp.status == 400, body
    assert "id" in body["error_message"] and body["field"] == "id"


CREATE_ERRORS = [
    ({"startTime": at("08:00")}, "stream_url"),
    ({"stream_url": "u"}, "startTime"),
    ({"stream_url": "u", "startTime": None}, "startTime"),
    ({"stream_url": "", "startTime": at("08:00")}, "stream_url"),
    ({"stream_url": 5, "startTime": at("08:00")}, "stream_url"),
    ({"stream_url": "u", "startTime": "yesterday"}, "startTime"),
    ({"stream_url": "u", "startTime": "2023-06-07T08:00:00"}, "startTime"),  # no offset: ambiguous
    ({"stream_url": "u", "startTime": "2023-02-30T08:00:00Z"}, "startTime"),
    ({"stream_url": "u", "startTime": 1686124800}, "startTime"),
    ({"stream_url": "u", "startTime": at("08:00"), "endTime": "soon"}, "endTime"),
    ({"stream_url": "u", "startTime": at("08:00"), "endTime": at("07:00")}, "endTime"),
    ({"stream_url": "u", "startTime": at("08:00"), "endTime": at("08:00")}, "endTime"),
    ({"stream_url": "u", "startTime": at("08:00"), "capturesource": "cam1"}, "capturesource"),
    ({"stream_url": "u", "startTime": at("08:00"), "capturesource": 2**53}, "capturesource"),
    ({"stream_url": "u", "startTime": at("08:00"), "colour": "red"}, "colour"),
    ({"stream_url": "u", "startTime": at("08:00"), "id": 5}, "id"),
]


@pytest.mark.parametrize("fields,named", CREATE_ERRORS)
async def test_create_validation_names_the_field_and_stores_nothing(client, data_dir, fields, named):
    resp = await client.post(API, json=fields)
    body = await resp.json()
    assert resp.status == 400, body
    assert named in body["error_message"] and body["field"] == named
    assert not list(data_dir.glob("videostreams/*.json"))
    assert await query(client) == []


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"'])
async def test_create_body_must_be_a_json_object(client, raw):
    resp = await client.post(API, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "JSON object" in (await resp.json())["error_message"]


PATCH_ERRORS = [
    ({"id": 12}, "id"),
    ({"name": "x"}, "name"),
    ({"stream_url": "new", "bogus": 1}, "bogus"),  # nothing changed, not even stream_url
    ({"stream_url": 42}, "stream_url"),
    ({"stream_url": None}, "stream_url"),
    ({"startTime": None}, "startTime"),
    ({"startTime": "8am"}, "startTime"),
    ({"endTime": 3}, "endTime"),
    ({"endTime": at("07:00")}, "endTime"),
    ({"startTime": at("10:00")}, "endTime"),  # after the stored end
    ({"capturesource": [1]}, "capturesource"),
    ({"capturesource": True}, "capturesource"),
]


@pytest.mark.parametrize("fields,named", PATCH_ERRORS)
async def test_patch_validation_names_the_field_and_changes_nothing(client, data_dir, fields, named):
    rec = await create(client, stream_url="http://old", capturesource=3, startTime=at("08:00"), endTime=at("09:00"))
    path = data_dir / "videostreams" / f"{rec['id']}.json"
    before = path.read_bytes()
    resp = await client.patch(f"{API}/{rec['id']}", json=fields)
    body = await resp.json()
    assert resp.status == 400, body
    assert named in body["error_message"] and body["field"] == named
    assert path.read_bytes() == before
    assert await (await client.get(f"{API}/{rec['id']}")).json() == rec
    assert ids(await query(client, **{"timespan[start]": at("08:30"), "timespan[end]": at("08:40")})) == [rec["id"]]


@pytest.mark.parametrize("params,named", [
    ({"timespan[start]": "monday"}, "timespan[start]"),
    ({"timespan[end]": "2023-06-07"}, "timespan[end]"),
    ({"timespan[start]": at("10:00"), "timespan[end]": at("09:00")}, "timespan[end]"),
    ({"capturesource": "cam"}, "capturesource"),
    ({"capturesource": "0"}, "capturesource"),
    ({"limit": "0"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"limit": "10001"}, "limit"),
    ({"cursor": "xyz"}, "cursor"),
])
async def test_query_validation_names_the_parameter(client, params, named):
    resp = await client.get(API, params=params)
    body = await resp.json()
    assert resp.status == 400, body
    assert named in body["error_message"] and body["field"] == named


async def test_pagination_walks_every_result_in_start_order(client):
    made = []
    for i in range(23):
        minute = (i * 37) % 60
        made.append(await create(client, stream_url=f"u{i}", capturesource=9,
                                 startTime=f"{DAY}T{10 + i % 5:02d}:{minute:02d}:00Z",
                                 endTime=f"{DAY}T{16 + i % 3:02d}:00:00Z"))
    same_start = await create(client, stream_url="twin", capturesource=9, startTime=made[0]["startTime"],
                              endTime=at("17:00"))
    made.append(same_start)
    everything = await query(client, capturesource="9")
    expected = sorted(made, key=lambda r: (r["startTime"], r["id"]))
    assert everything == expected

    walked, url, pages = [], f"{API}?capturesource=9&limit=5", 0
    while url:
        resp = await client.get(url)
        page = (await resp.json())["results"]
        assert resp.status == 200 and len(page) <= 5
        walked += page
        pages += 1
        cursor = resp.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in resp.headers
            url = None
        else:
            link = resp.headers["Link"]
            assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
            url = link[1:link.index(">")]
    assert walked == expected
    assert pages == 5


async def test_default_page_size_setting_limits_the_answer(make_client):
    client = await make_client(videostreams_page_size=2)
    for i in range(3):
        await create(client, stream_url=f"u{i}", startTime=at(f"1{i}:00"))
    resp = await client.get(API)
    body = await resp.json()
    assert len(body["results"]) == 2 and body["limit"] == 2 and body["total"] == 3
    assert body["next_cursor"] == resp.headers["X-Next-Cursor"]
    resp = await client.get(API, params={"cursor": resp.headers["X-Next-Cursor"]})
    body = await resp.json()
    assert len(body["results"]) == 1 and "X-Next-Cursor" not in resp.headers and body["next_cursor"] is None


async def test_restart_rebuilds_the_same_answers(aiohttp_client, client, config, diagram):
    live = await client.post(f"{API}/live", json={"stream_url": "live", "capturesource": 77})
    live = await live.json()
    await client.patch(f"{API}/{diagram[0]['id']}", json={"stream_url": "moved"})
    await client.delete(f"{API}/{diagram[4]['id']}")
    queries = [{}, {"timespan[start]": at("16:00"), "timespan[end]": at("19:30")},
               {"timespan[start]": at("20:30")}, {"capturesource": "77"}, {"limit": "2"}]
    before = [await query(client, **q) for q in queries]
    again = await aiohttp_client(create_app(config))
    after = [await query(again, **q) for q in queries]
    assert after == before
    assert len(again.app[VIDEOSTREAMS]) == 5
    resp = await again.patch(f"{API}/{live['id']}/live")
    assert resp.status == 200


async def test_service_api_for_other_families(client):
    catalogue = client.app[VIDEOSTREAMS]
    start = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    rec = await catalogue.start_live("rtsp://cam/1", 42, start=start)
    assert rec["startTime"] == "2024-03-01T12:00:00Z" and rec["endTime"] is None
    ended = await catalogue.end_live(rec["id"], end=start + timedelta(minutes=5))
    assert ended["endTime"] == "2024-03-01T12:05:00Z"
    with pytest.raises(Conflict):
        await catalogue.end_live(rec["id"])
    page = await catalogue.query(start, start + timedelta(hours=1), 42, limit=10, cursor=None)
    assert page.items == [ended] and page.next_cursor is None
    assert await (await client.get(f"{API}/{rec['id']}")).json() == ended


async def test_restart_reads_hand_edited_records_and_skips_unreadable_ones(aiohttp_client, config, data_dir):
    records = data_dir / "videostreams"
    records.mkdir()
    (records / "1099511627776.json").write_text(json.dumps({  # another layout, offsets, no capturesource
        "stream_url": "http://by-hand", "id": 1099511627776, "startTime": "2023-06-07T10:00:00.5+02:00",
        "endTime": "2023-06-07T09:00:00Z"}))
    (records / "1099511627777.json").write_text("{not json")
    (records / "1099511627778.json").write_text(json.dumps({"id": 1099511627778, "stream_url": "x"}))
    (records / "1099511627779.json").write_text(json.dumps({"id": 5, "stream_url": "x", "startTime": at("08:00")}))
    client = await aiohttp_client(create_app(config))
    assert await query(client) == [{"id": 1099511627776, "startTime": "2023-06-07T08:00:00.500000Z",
                                    "endTime": "2023-06-07T09:00:00Z", "stream_url": "http://by-hand",
                                    "capturesource": None}]
    assert (await client.get(f"{API}/1099511627777")).status == 404


async def test_the_daemons_references_come_from_memory_and_equal_the_files(aiohttp_client, config, data_dir):
    def obj(n: int) -> str:
        return f"{n:064x}"

    first = await aiohttp_client(create_app(config))
    linked = [await create(first, stream_url=f"/download/{obj(1)}", startTime=at("10:00")),
              await create(first, stream_url=f"http://box.local/download/{obj(2)}/a.mp4", startTime=at("11:00")),
              await create(first, stream_url=f"/download/{obj(3)}", startTime=at("12:00")),
              await create(first, stream_url=f"/download/{obj(4)}", startTime=at("13:00"))]
    await create(first, stream_url="http://vid.example/download/not-an-object", startTime=at("14:00"))
    await first.close()
    client = await aiohttp_client(create_app(config))  # those records now the frozen rows of the memory
    assert (await client.patch(f"{API}/{linked[2]['id']}", json={"stream_url": "http://elsewhere"})).status == 200
    assert (await client.delete(f"{API}/{linked[3]['id']}")).status == 200
    later = await create(client, stream_url=f"/download/{obj(5)}", startTime=at("15:00"))
    provider = next(p for p in client.app[JANITOR].janitor.providers if p.name == "videostreams")
    await provider.ready()
    scan = Scan(Layout(data_dir), config)
    from_files = sorted(VideostreamsProvider(Layout(data_dir), config).references(scan))

    def read_every_file():
        raise AssertionError("the daemon's references read every record file")
    provider.records.all_blocking = read_every_file
    from_memory = sorted(await asyncio.to_thread(lambda: list(provider.references(scan))))
    assert from_memory == from_files == sorted(
        [(obj(1), f"videostreams/{linked[0]['id']}"), (obj(2), f"videostreams/{linked[1]['id']}"),
         (obj(5), f"videostreams/{later['id']}")])


async def test_pages_of_everything_equal_slices_of_the_whole_answer(data_dir):
    """Unbounded pages (held counts, only the page taken) answer what the full listing answers."""
    first = VideostreamCatalogue(Layout(data_dir))
    made = [await first.create({"stream_url": f"u{i}", "capturesource": 7 if i % 3 else 8,
                                "startTime": f"{DAY}T{10 + i % 4:02d}:{(i * 17) % 60:02d}:00Z",
                                "endTime": None if i == 5 else f"{DAY}T{15 + i % 2:02d}:00:00Z"})
            for i in range(14)]
    await first.close()
    catalogue = VideostreamCatalogue(Layout(data_dir))  # the records are the frozen rows now
    await catalogue.load()
    await catalogue.update(made[2]["id"], {"startTime": f"{DAY}T09:00:00Z"})
    await catalogue.delete(made[4]["id"])
    for i in range(3):
        await catalogue.create({"stream_url": f"w{i}", "capturesource": 8, "startTime": f"{DAY}T1{i}:17:00Z"})
    for source in (None, 7, 8, 9):
        whole = (await catalogue.query(0, None, source)).items  # bounded: the full listing
        assert len(whole) == {None: 16, 7: 8, 8: 8, 9: 0}[source]
        for limit in (1, 2, 5, 20):
            for offset in (0, 1, 3):
                page = await catalogue.query(None, None, source, limit=limit, offset=offset)
                assert page.items == whole[offset:offset + limit] and page.total == len(whole)
                assert (page.next_cursor is None) == (offset + limit >= len(whole))
            walked, cursor = [], None
            while True:
                page = await catalogue.query(None, None, source, limit=limit, cursor=cursor)
                walked += page.items
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert walked == whole


def test_own_format_fast_path_agrees_with_the_full_check():
    import random

    from storaged.store.atomic import dumps
    from storaged.videostreams.service import VideostreamCatalogue, _parse_own, _row
    from storaged.videostreams.times import format_us

    rng = random.Random(3)
    plain_urls = ["http://vid.example/get?id=1", "https://www.youtube.com/watch?v=abc", "rtsp://cam/é/ü", "x" * 8192]
    escaped_urls = ['a"quote', "back\\slash"]
    bad_urls = ["tab\there", " ", "x" * 8193]
    fast_hits = 0
    for n in range(400):
        rid = rng.randrange(1, 2**53)
        start = rng.randrange(-10**15, 4 * 10**15)
        record = {"id": rid, "startTime": format_us(start),
                  "endTime": rng.choice([None, format_us(start + rng.randrange(1, 10**11))]),
                  "stream_url": rng.choice(plain_urls), "capturesource": rng.choice([None, 1, 2**53 - 1])}
        defect = n % 4
        if defect == 1:
            record["stream_url"] = rng.choice(escaped_urls)  # valid, but needs the json module
        elif defect == 2:
            field, value = rng.choice([("stream_url", rng.choice(bad_urls)),
                                       ("capturesource", rng.choice([0, 2**53])),
                                       ("endTime", rng.choice([record["startTime"], format_us(start - 1)]))])
            record[field] = value  # invalid: both paths refuse it
        fast = _parse_own(dumps(record).decode(), rid)
        try:
            full_record, s, e = VideostreamCatalogue._from_disk(record, rid)
            full = (_row(full_record), s, e)
        except Exception:
            full = None
        if defect in (0, 3):
            assert fast is not None and fast == full, record
            fast_hits += 1
        elif defect == 1:
            assert fast is None and full is not None, record
        else:
            assert fast is None and full is None, record
    assert fast_hits == 200


async def test_list_envelope_offset_limit_total_like_openfish(client, diagram):
    """OpenFish answers every list as {results, offset, limit, total}; its web client pages with offset."""
    span = {"timespan[start]": at("16:00"), "timespan[end]": at("19:30")}
    everything = await query(client, **span)
    assert len(everything) == 4
    walked, offset = [], 0
    while True:
        resp = await client.get(API, params={**span, "offset": str(offset), "limit": "3"})
        body = await resp.json()
        assert resp.status == 200 and body["offset"] == offset and body["limit"] == 3 and body["total"] == 4
        if not body["results"]:
            break
        walked += body["results"]
        offset += len(body["results"])
    assert walked == everything
    resp = await client.get(API, params={**span, "offset": "9"})
    assert (await resp.json())["results"] == [] and resp.status == 200


async def test_format_selects_keys_of_lists_and_fetches(client, diagram):
    resp = await client.get(API, params={"format": "id,stream_url"})
    results = (await resp.json())["results"]
    assert results and all(set(r) == {"id", "stream_url"} for r in results)
    one = diagram[0]
    resp = await client.get(f"{API}/{one['id']}", params={"format": "startTime"})
    assert await resp.json() == {"startTime": one["startTime"]}
    resp = await client.get(API, params={"format": "id,colour"})
    body = await resp.json()
    assert resp.status == 400 and body["field"] == "format" and "colour" in body["error_message"]


@pytest.mark.parametrize("offset", ["-1", "x", "1.5"])
async def test_malformed_offset_is_400(client, offset):
    resp = await client.get(API, params={"offset": offset})
    body = await resp.json()
    assert resp.status == 400 and body["field"] == "offset"
