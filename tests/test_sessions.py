"""Sessions, races and events: CRUD through HTTP, validation, cascades and event queries."""

from __future__ import annotations

import asyncio
import json

import pytest


async def post(client, path, body=None, status=201):
    resp = await client.post(path, json=body) if body is not None else await client.post(path)
    out = await resp.json()
    assert resp.status == status, out
    return out


async def get(client, path, status=200):
    resp = await client.get(path)
    out = await resp.json()
    assert resp.status == status, out
    return out


async def put(client, path, body, status=200):
    resp = await client.put(path, json=body)
    out = await resp.json()
    assert resp.status == status, out
    return out


async def delete(client, path, status=200):
    resp = await client.delete(path)
    out = await resp.json()
    assert resp.status == status, out
    return out


async def new_session(client, **body):
    return (await post(client, "/sessions", body))["id"]


async def new_race(client, session_id, start_time=0, duration=10, **more):
    return (await post(client, f"/sessions/{session_id}/races",
                       {"start_time": start_time, "duration": duration, **more}))["id"]


async def new_event(client, session_id, time, type="lap", **more):
    return (await post(client, f"/sessions/{session_id}/events", {"time": time, "type": type, **more}))["id"]


# -- sessions -------------------------------------------------------------------------
async def test_session_create_get_list_is_a_json_list_in_id_order(client, data_dir):
    assert await get(client, "/sessions") == []
    resp = await client.post("/sessions", json={"video_url": "http://example.com/a.mp4"})
    assert resp.status == 201 and resp.headers["Location"] == "/sessions/1"
    assert await resp.json() == {"id": 1}
    assert (await post(client, "/sessions"))["id"] == 2  # no body: a session without video
    first = await get(client, "/sessions/1")
    assert first["id"] == 1 and first["video_url"] == "http://example.com/a.mp4" and first["created"].endswith("Z")
    assert (await get(client, "/sessions/2"))["video_url"] is None
    assert [s["id"] for s in await get(client, "/sessions")] == [1, 2]
    on_disk = json.loads((data_dir / "sessions" / "1.json").read_text())
    assert on_disk == first


async def test_session_put_updates_video_url_only(client):
    sid = await new_session(client)
    out = await put(client, f"/sessions/{sid}", {"video_url": "/download/" + "a" * 64})
    assert out["video_url"] == "/download/" + "a" * 64
    assert (await get(client, f"/sessions/{sid}"))["video_url"] == "/download/" + "a" * 64
    assert (await put(client, f"/sessions/{sid}", {"video_url": None}))["video_url"] is None


@pytest.mark.parametrize("body, named", [
    ({"id": 5}, "id"),
    ({"created": "2020-01-01T00:00:00Z"}, "created"),
    ({"colour": "red"}, "colour"),
    ({"video_url": 12}, "video_url"),
    ({"video_url": "http://x/ok.mp4", "bogus": 1}, "bogus"),
])
async def test_session_put_bad_property_is_400_naming_it_and_changes_nothing(client, data_dir, body, named):
    sid = await new_session(client, video_url="http://x/before.mp4")
    before = (data_dir / "sessions" / f"{sid}.json").read_bytes()
    out = await put(client, f"/sessions/{sid}", body, status=400)
    assert f"'{named}'" in out["error_message"]
    assert (data_dir / "sessions" / f"{sid}.json").read_bytes() == before


async def test_session_post_bad_bodies_are_400(client):
    for raw in (b"{not json", b"[1, 2]", b'"text"', b'{"video_url": NaN}'):
        resp = await client.post("/sessions", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert "error_message" in await resp.json()
    assert await get(client, "/sessions") == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
async def test_unknown_ids_are_404_and_malformed_ids_400(client, method):
    for kind in ("sessions", "races", "events"):
        resp = await getattr(client, method)(f"/{kind}/999", json={})
        assert resp.status == 404, (kind, await resp.text())
        assert "not found" in (await resp.json())["error_message"]
        for bad in ("abc", "-1", "0", "1.5", "99999999999999999999"):
            resp = await getattr(client, method)(f"/{kind}/{bad}", json={})
            assert resp.status == 400, (kind, bad)
            assert "malformed" in (await resp.json())["error_message"]


async def test_sub_collections_of_unknown_or_malformed_sessions(client):
    for sub in ("races", "events", "split_races"):
        assert (await client.get(f"/sessions/42/{sub}")).status == 404
        assert (await client.get(f"/sessions/x/{sub}")).status == 400
    assert (await client.post("/sessions/42/races", json={"start_time": 1, "duration": 2})).status == 404
    assert (await client.post("/sessions/42/events", json={"time": 1, "type": "a"})).status == 404
    assert (await client.post("/sessions/42/split_races")).status == 404


# -- races ------------------------------------------------------------------------------
async def test_race_create_list_get_update(client):
    sid = await new_session(client)
    other = await new_session(client)
    r1 = await new_race(client, sid, 5, 30)
    r2 = await new_race(client, sid, 40.5, 12.25, video_url="http://x/r.mp4")
    r3 = await new_race(client, other, 0, 1)
    races = await get(client, f"/sessions/{sid}/races")
    assert [r["id"] for r in races] == [r1, r2]
    assert races[0]["session_id"] == sid and races[0]["start_time"] == 5 and races[0]["duration"] == 30
    assert races[0]["video_url"] is None and races[1]["video_url"] == "http://x/r.mp4"
    assert [r["id"] for r in await get(client, f"/sessions/{other}/races")] == [r3]
    out = await put(client, f"/races/{r1}", {"start_time": 6, "video_url": "http://x/new.mp4"})
    assert out["start_time"] == 6 and out["duration"] == 30 and out["video_url"] == "http://x/new.mp4"
    assert await get(client, f"/races/{r1}") == out


@pytest.mark.parametrize("body, named", [
    ({"duration": 10}, "start_time"),
    ({"start_time": 1}, "duration"),
    ({"start_time": -1, "duration": 10}, "start_time"),
    ({"start_time": "1", "duration": 10}, "start_time"),
    ({"start_time": 1, "duration": True}, "duration"),
    ({"start_time": 1, "duration": 2, "session_id": 1}, "session_id"),
    ({"start_time": 1, "duration": 2, "lap": 3}, "lap"),
])
async def test_race_create_rejects_bad_bodies(client, body, named):
    sid = await new_session(client)
    out = await post(client, f"/sessions/{sid}/races", body, status=400)
    assert f"'{named}'" in out["error_message"]
    assert await get(client, f"/sessions/{sid}/races") == []


@pytest.mark.parametrize("body, named", [
    ({"id": 3}, "id"), ({"session_id": 2}, "session_id"), ({"created": "x"}, "created"),
    ({"duration": -5}, "duration"), ({"start_time": [1]}, "start_time"), ({"winner": "me"}, "winner"),
    ({"start_time": 2, "duration": "long"}, "duration"),
])
async def test_race_put_rejects_bad_properties_and_changes_nothing(client, data_dir, body, named):
    sid = await new_session(client)
    rid = await new_race(client, sid, 1, 2)
    before = (data_dir / "races" / f"{rid}.json").read_bytes()
    out = await put(client, f"/races/{rid}", body, status=400)
    assert f"'{named}'" in out["error_message"]
    assert (data_dir / "races" / f"{rid}.json").read_bytes() == before


async def test_race_delete_detaches_its_events(client):
    sid = await new_session(client)
    rid = await new_race(client, sid)
    keep = await new_race(client, sid)
    eid = await new_event(client, sid, 3, race_id=rid)
    other = await new_event(client, sid, 4, race_id=keep)
    assert await delete(client, f"/races/{rid}") == {"id": rid, "deleted": True}
    assert (await client.get(f"/races/{rid}")).status == 404
    assert (await get(client, f"/events/{eid}"))["race_id"] is None
    assert (await get(client, f"/events/{other}"))["race_id"] == keep
    assert [r["id"] for r in await get(client, f"/sessions/{sid}/races")] == [keep]


async def test_session_delete_removes_its_races_and_events_only(client, data_dir):
    sid = await new_session(client)
    other = await new_session(client)
    races = [await new_race(client, sid, i, 1) for i in range(3)]
    events = [await new_event(client, sid, i) for i in range(3)]
    kept_race = await new_race(client, other)
    kept_event = await new_event(client, other, 1)
    assert await delete(client, f"/sessions/{sid}") == {"id": sid, "deleted": True}
    assert (await client.get(f"/sessions/{sid}")).status == 404
    for rid in races:
        assert (await client.get(f"/races/{rid}")).status == 404
    for eid in events:
        assert (await client.get(f"/events/{eid}")).status == 404
    assert (await get(client, f"/races/{kept_race}"))["session_id"] == other
    assert (await get(client, f"/events/{kept_event}"))["session_id"] == other
    assert sorted(p.name for p in (data_dir / "races").glob("*.json")) == [f"{kept_race}.json"]
    assert (await client.delete(f"/sessions/{sid}")).status == 404


async def test_concurrent_race_creation_gets_distinct_sequential_ids(client):
    sid = await new_session(client)
    ids = await asyncio.gather(*(new_race(client, sid, i, 1) for i in range(20)))
    assert sorted(ids) == list(range(1, 21))
    assert [r["id"] for r in await get(client, f"/sessions/{sid}/races")] == list(range(1, 21))


# -- events ------------------------------------------------------------------------------
async def test_event_create_get_update_delete(client):
    sid = await new_session(client)
    rid = await new_race(client, sid)
    eid = await new_event(client, sid, 12.5, "crash", duration=3, race_id=rid, data={"player": 2})
    event = await get(client, f"/events/{eid}")
    assert event == {"id": eid, "session_id": sid, "time": 12.5, "type": "crash", "duration": 3,
                     "race_id": rid, "data": {"player": 2}, "created": event["created"]}
    minimal = await get(client, f"/events/{await new_event(client, sid, 0, 'start')}")
    assert minimal["duration"] is None and minimal["race_id"] is None and minimal["data"] == {}
    out = await put(client, f"/events/{eid}", {"type": "spin", "data": {"player": 3}, "duration": None})
    assert out["type"] == "spin" and out["data"] == {"player": 3} and out["duration"] is None
    assert out["time"] == 12.5 and out["race_id"] == rid
    assert await delete(client, f"/events/{eid}") == {"id": eid, "deleted": True}
    assert (await client.get(f"/events/{eid}")).status == 404


@pytest.mark.parametrize("body, named", [
    ({"type": "lap"}, "time"),
    ({"time": 1}, "type"),
    ({"time": -0.5, "type": "lap"}, "time"),
    ({"time": 1, "type": ""}, "type"),
    ({"time": 1, "type": 7}, "type"),
    ({"time": 1, "type": "lap", "duration": -1}, "duration"),
    ({"time": 1, "type": "lap", "data": [1]}, "data"),
    ({"time": 1, "type": "lap", "race_id": "1"}, "race_id"),
    ({"time": 1, "type": "lap", "id": 9}, "id"),
    ({"time": 1, "type": "lap", "extra": 9}, "extra"),
])
async def test_event_create_rejects_bad_bodies(client, body, named):
    sid = await new_session(client)
    out = await post(client, f"/sessions/{sid}/events", body, status=400)
    assert f"'{named}'" in out["error_message"]
    assert await get(client, f"/sessions/{sid}/events") == []


async def test_event_race_must_belong_to_the_session(client, data_dir):
    sid = await new_session(client)
    other = await new_session(client)
    foreign = await new_race(client, other)
    out = await post(client, f"/sessions/{sid}/events", {"time": 1, "type": "a", "race_id": foreign}, status=400)
    assert f"does not belong to session {sid}" in out["error_message"]
    out = await post(client, f"/sessions/{sid}/events", {"time": 1, "type": "a", "race_id": 999}, status=400)
    assert "999" in out["error_message"]
    eid = await new_event(client, sid, 1)
    before = (data_dir / "events" / f"{eid}.json").read_bytes()
    await put(client, f"/events/{eid}", {"race_id": foreign, "type": "changed"}, status=400)
    assert (data_dir / "events" / f"{eid}.json").read_bytes() == before
    own = await new_race(client, sid)
    assert (await put(client, f"/events/{eid}", {"race_id": own}))["race_id"] == own
    for bad in ({"session_id": other}, {"created": "x"}, {"nope": 1}, {"time": "soon"}):
        await put(client, f"/events/{eid}", bad, status=400)


async def test_event_queries_by_session_race_type_and_time_range(client):
    s1 = await new_session(client)
    s2 = await new_session(client)
    race_a = await new_race(client, s1, 0, 50)
    race_b = await new_race(client, s1, 50, 50)
    e = {
        "lap_a": await new_event(client, s1, 10, "lap", race_id=race_a),
        "crash_a": await new_event(client, s1, 20, "crash", duration=15, race_id=race_a),  # 20..35
        "lap_b": await new_event(client, s1, 60, "lap", race_id=race_b),
        "boost_b": await new_event(client, s1, 70, "boost", duration=5, race_id=race_b),  # 70..75
        "free": await new_event(client, s1, 45, "lap"),
        "other": await new_event(client, s2, 30, "lap"),
    }

    async def ids(path):
        return [x["id"] for x in await get(client, path)]

    assert await ids("/events") == sorted(e.values())
    assert await ids(f"/events?session={s1}") == sorted(v for k, v in e.items() if k != "other")
    assert await ids(f"/sessions/{s2}/events") == [e["other"]]
    assert await ids(f"/events?race={race_a}") == [e["lap_a"], e["crash_a"]]
    assert await ids(f"/sessions/{s1}/events?race={race_b}") == [e["lap_b"], e["boost_b"]]
    assert await ids("/events?type=lap") == [e["lap_a"], e["lap_b"], e["free"], e["other"]]
    assert await ids(f"/events?session={s1}&type=lap&race={race_a}") == [e["lap_a"]]
    # Overlap: the crash (20..35) touches 30..40 though it starts before it; a point event needs to be inside.
    assert await ids(f"/events?session={s1}&from=30&to=40") == [e["crash_a"]]
    assert await ids("/events?from=35&to=35") == [e["crash_a"]]  # closed interval at the crash's end
    assert await ids(f"/events?session={s1}&from=72") == [e["boost_b"]]
    assert await ids(f"/events?session={s1}&to=10") == [e["lap_a"]]
    assert await ids(f"/events?session={s1}&from=36&to=44.9") == []
    assert await ids("/events?type=crash&from=0&to=100") == [e["crash_a"]]
    assert await ids("/events?session=999") == []


@pytest.mark.parametrize("query, named", [
    ("from=abc", "from"), ("to=inf", "to"), ("from=10&to=5", "from"), ("race=x", "race"),
    ("session=-3", "session"), ("colour=red", "colour"),
])
async def test_event_query_rejects_bad_parameters(client, query, named):
    resp = await client.get(f"/events?{query}")
    assert resp.status == 400
    assert named in (await resp.json())["error_message"]


async def test_split_without_video_or_races_is_400(client):
    sid = await new_session(client)
    await new_race(client, sid)
    out = await post(client, f"/sessions/{sid}/split_races", status=400)
    assert "video_url" in out["error_message"]
    empty = await new_session(client, video_url="http://127.0.0.1:9/x.mp4")
    out = await post(client, f"/sessions/{empty}/split_races", status=400)
    assert "no races" in out["error_message"]
    await new_race(client, empty)
    out = await post(client, f"/sessions/{empty}/split_races", {"fast": True}, status=400)
    assert "'fast'" in out["error_message"]
    out = await post(client, f"/sessions/{empty}/split_races", {"accurate": "yes"}, status=400)
    assert "accurate" in out["error_message"]
    bad = await new_session(client, video_url="ftp://host/x.mp4")
    await new_race(client, bad)
    out = await post(client, f"/sessions/{bad}/split_races", status=400)
    assert "video_url" in out["error_message"]
    missing = await new_session(client, video_url="/download/" + "0" * 64)
    await new_race(client, missing)
    out = await post(client, f"/sessions/{missing}/split_races", status=400)
    assert "not in the store" in out["error_message"]
    out = await get(client, f"/sessions/{sid}/split_races", status=404)
    assert "no split" in out["error_message"]
