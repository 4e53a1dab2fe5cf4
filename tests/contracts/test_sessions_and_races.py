"""specs/sessions-and-races.md, as its client uses it: sessions and races with GET/PUT/DELETE on items and
GET/POST on lists, then POST split_races and read each race's new video_url."""

from __future__ import annotations

from tests.helpers import duration_of, wait_until


async def test_sessions_and_races_client_session(daemon, http, video_10s, tmp_path):
    d = daemon()

    async def call(method, path, body=None):
        async with http.request(method, d.url + path, json=body) as r:
            return r.status, (await r.json(content_type=None) if r.content_length != 0 else None)

    async with http.post(f"{d.url}/upload?name=session.mp4", data=video_10s.read_bytes()) as r:
        file_id = (await r.json())["file_id"]

    # Lists: GET a JSON list, POST creates and returns the new object's id.
    assert await call("GET", "/sessions") == (200, [])
    status, created = await call("POST", "/sessions", {"video_url": f"/download/{file_id}/session.mp4"})
    assert status in (200, 201) and isinstance(created["id"], int)
    sid = created["id"]
    status, sessions = await call("GET", "/sessions")
    assert [s["id"] for s in sessions] == [sid]

    # Items: GET the object, PUT updates some properties, DELETE deletes.
    status, session = await call("GET", f"/sessions/{sid}")
    assert status == 200 and session["video_url"] == f"/download/{file_id}/session.mp4"
    status, updated = await call("PUT", f"/sessions/{sid}", {"video_url": f"/download/{file_id}/race-day.mp4"})
    assert status == 200 and updated["video_url"].endswith("/race-day.mp4")

    # Races: start_time and duration required (bold), video_url optional.
    status, _ = await call("POST", f"/sessions/{sid}/races", {"duration": 2})
    assert status == 400
    race_ids = []
    for start, duration in ((1, 2), (5, 3)):
        status, race = await call("POST", f"/sessions/{sid}/races", {"start_time": start, "duration": duration})
        assert status in (200, 201)
        race_ids.append(race["id"])
    status, races = await call("GET", f"/sessions/{sid}/races")
    assert [r["id"] for r in races] == race_ids
    status, race = await call("PUT", f"/races/{race_ids[1]}", {"duration": 4})
    assert status == 200 and race["duration"] == 4

    # Splitting: ffmpeg cuts each race out and updates the race's URL.
    status, _ = await call("POST", f"/sessions/{sid}/split_races")
    assert status in (200, 202)

    async def all_split():
        urls = []
        for rid in race_ids:
            _, race = await call("GET", f"/races/{rid}")
            urls.append(race["video_url"])
        return urls if all(urls) else None

    urls = await wait_until(all_split, timeout=90, what="races split")
    for url, length in zip(urls, (2, 4)):
        async with http.get(d.url + url) as r:
            assert r.status == 200
            (tmp_path / "race.mp4").write_bytes(await r.read())
        assert length - 0.1 <= duration_of(tmp_path / "race.mp4") <= length + 1.1  # copy cuts start on a keyframe

    assert (await call("DELETE", f"/races/{race_ids[0]}"))[0] == 200
    assert (await call("GET", f"/races/{race_ids[0]}"))[0] == 404
    assert (await call("DELETE", f"/sessions/{sid}"))[0] == 200
    assert (await call("GET", f"/sessions/{sid}"))[0] == 404
    assert (await call("GET", f"/races/{race_ids[1]}"))[0] == 404
