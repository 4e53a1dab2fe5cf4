"""specs/stream-recording.md, as its client uses it: create a stream (GET or POST), start it, read its
status, poll get_clip through pending/processing to done, download the links, stop; every error string
byte for byte."""

from __future__ import annotations

import time

from tests.helpers import ffprobe, json_of, wait_until
from tests.live_source import LiveSource, kill_processes_under

FAST = ("--stream-segment-time", "2", "--stream-start-timeout", "30", "--stream-clip-wait", "0.5")


async def test_recording_client_session(daemon, http, tmp_path):
    source = LiveSource().start()
    try:
        await _session(daemon(*FAST), http, source, tmp_path)
    finally:
        source.stop()
        kill_processes_under(tmp_path)


async def _session(d, http, source, tmp_path):
    async def call(method, path, **kw):
        async with http.request(method, d.url + path, **kw) as r:
            return r.status, await json_of(r)

    # 1. Create: url required (500 "URL cannot be empty"); GET and POST both work.
    assert await call("POST", "/streams/create") == (500, {"error_message": "URL cannot be empty"})
    assert await call("GET", "/streams/create", params={"url": source.url, "description": "via GET"}) == (
        200, {"stream_id": 1})
    status, created = await call("POST", "/streams/create", data={"url": source.url, "description": "gate"})
    assert status == 200 and created == {"stream_id": 2}
    sid = created["stream_id"]

    # 0. The list.
    status, listed = await call("GET", "/streams/")
    assert status == 200 and [s["id"] for s in listed["result"]] == [1, 2]

    # 5. A clip of a stream never started.
    assert await call("GET", f"/streams/{sid}/get_clip", params={"start": str(int(time.time()))}) == (
        500, {"error_message": "Stream not started"})
    # 3. Stop before start.
    assert await call("POST", f"/streams/{sid}/stop") == (500, {"error_message": "Stream not started"})

    # 2. Start (and again: already started); unknown ids.
    began = time.time()
    assert await call("POST", f"/streams/{sid}/start") == (200, {"result": "ok"})
    assert await call("POST", f"/streams/{sid}/start") == (500, {"error_message": "Stream already started"})
    assert await call("POST", "/streams/99/start") == (404, {"error_message": "Stream not found"})
    assert await call("GET", "/streams/99/status") == (404, {"error_message": "Stream not found"})

    # 4. Status: the contract's fields.
    status, st = await call("GET", f"/streams/{sid}/status")
    assert status == 200
    assert {k: st[k] for k in ("id", "url", "description", "stop_date")} == {
        "id": sid, "url": source.url, "description": "gate", "stop_date": None}
    assert isinstance(st["create_date"], int) and isinstance(st["start_date"], int)
    assert abs(st["start_date"] - began) < 30

    async def recorded():
        _, st = await call("GET", f"/streams/{sid}/status")
        return st["segments"] >= 4

    await wait_until(recorded, timeout=60, what="four segments")

    # 5. get_clip: statuses pending/processing/done only; links only when done.
    _, st = await call("GET", f"/streams/{sid}/status")
    start = st["first_segment_start"] + 1
    stop = start + 3

    async def clip_done():
        status, out = await call("GET", f"/streams/{sid}/get_clip", params={"start": str(start), "stop": str(stop)})
        assert status == 200 and out["status"] in ("pending", "processing", "done"), out
        if out["status"] != "done":
            assert "clips" not in out
            return None
        return out

    done = await wait_until(clip_done, timeout=90, what="clip done")
    assert done["clips"] and all(set(c) >= {"link"} for c in done["clips"])
    async with http.get(done["clips"][0]["link"]) as r:
        assert r.status == 200
        (tmp_path / "clip.mp4").write_bytes(await r.read())
    assert float(ffprobe(tmp_path / "clip.mp4")["format"]["duration"]) > 1

    # 3. Stop (and again: not started any more).
    assert await call("POST", f"/streams/{sid}/stop") == (200, {"result": "ok"})
    assert await call("POST", f"/streams/{sid}/stop") == (500, {"error_message": "Stream not started"})
    status, st = await call("GET", f"/streams/{sid}/status")
    assert isinstance(st["stop_date"], int) and st["stop_date"] >= st["start_date"]
