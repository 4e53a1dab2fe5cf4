"""Splitting a session video into per-race clips: the job function and the HTTP job around it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from storaged.jobs.context import JobContext
from storaged.sessions.split import split_races
from tests.helpers import Daemon, ffprobe, json_of, make_video, sha256_file, wait_until

FPS = 25
GOP_SECONDS = 1.0  # make_video: gop 25 at 25 fps
FRAME = 1 / FPS
RACES = [(5.0, 15.0), (30.5, 14.5), (60.2, 24.8)]  # (start_time, duration) inside the 90 s video
BEYOND = (80.0, 30.0)  # ends at 110 s: past the end of the video


@pytest.fixture(scope="session")
def video_90s(media_dir: Path) -> Path:
    return make_video(media_dir / "ninety.mp4", seconds=90, fps=FPS, gop=25)


def stream_duration(path: Path, kind: str) -> float:
    info = ffprobe(path)
    return float(next(s for s in info["streams"] if s["codec_type"] == kind)["duration"])


async def upload(client, path: Path) -> dict:
    with open(path, "rb") as fh:
        resp = await client.post("/upload", params={"name": path.name}, data=fh)
    assert resp.status == 200
    return await resp.json()


async def session_with_races(client, video_url: str, races) -> tuple[int, list[int]]:
    resp = await client.post("/sessions", json={"video_url": video_url})
    sid = (await resp.json())["id"]
    ids = []
    for start, duration in races:
        resp = await client.post(f"/sessions/{sid}/races", json={"start_time": start, "duration": duration})
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    return sid, ids


async def wait_split(client, sid: int, timeout: float = 90) -> dict:
    async def finished():
        resp = await client.get(f"/sessions/{sid}/split_races")
        assert resp.status == 200
        report = await resp.json()
        return report if report["status"] in ("done", "failed", "cancelled") else None
    return await wait_until(finished, timeout=timeout, interval=0.1, what="split job")


async def download(client, url: str, dest: Path) -> Path:
    resp = await client.get(url)
    assert resp.status == 200, url
    dest.write_bytes(await resp.read())
    return dest


# -- the job function, called directly ------------------------------------------------------
def test_split_function_cuts_each_race_in_one_pass_and_stores_clips(video_90s, data_dir, tmp_path):
    job_dir = data_dir / "sessions" / "1.split" / "direct"
    job_dir.mkdir(parents=True)
    races = [{"race_id": i + 1, "start_time": s, "duration": d} for i, (s, d) in enumerate(RACES)]
    races.append({"race_id": 9, "start_time": BEYOND[0], "duration": BEYOND[1]})
    races.append({"race_id": 10, "start_time": 95.0, "duration": 2.0})
    ctx = JobContext(job_dir, data_dir, {"args": {"session_id": 1, "source": "file:" + str(video_90s),
                                                  "races": races, "accurate": False}})
    result = split_races(ctx)
    assert result["split"] == 3 and result["failed"] == 2
    assert abs(result["video_duration"] - 90) < 0.2
    by_id = {r["race_id"]: r for r in result["races"]}
    assert "after the end of the session video" in by_id[9]["error"] and "110" in by_id[9]["error"]
    assert "starts at 95" in by_id[10]["error"]
    for i, (start, duration) in enumerate(RACES, start=1):
        race = by_id[i]
        assert "error" not in race
        # The clip starts on the keyframe at or before the race (one per second here).
        assert race["clip_start"] == float(int(start))
        oid = race["file_id"]
        clip = data_dir / oid[:2] / oid[2:] / f"session-1-race-{i}.mp4"
        assert sha256_file(clip) == oid and race["video_url"] == f"/download/{oid}/session-1-race-{i}.mp4"
        got = stream_duration(clip, "video")
        assert duration - FRAME <= got <= duration + GOP_SECONDS + FRAME, (i, got)
    # Produced files were moved into the store: nothing but the progress file is left behind.
    assert sorted(p.name for p in job_dir.iterdir()) == ["progress.json"]


# -- through HTTP ----------------------------------------------------------------------------
async def test_split_through_http_sets_each_race_video_url(client, video_90s, tmp_path, data_dir):
    up = await upload(client, video_90s)
    sid, race_ids = await session_with_races(client, up["download"], [*RACES, BEYOND])

    resp = await client.post(f"/sessions/{sid}/split_races")
    assert resp.status == 202
    accepted = await resp.json()
    assert accepted["status"] in ("queued", "running", "done")
    assert accepted["status_url"] == f"/sessions/{sid}/split_races"
    job_id = accepted["job_id"]
    assert (data_dir / "sessions" / f"{sid}.split" / job_id / "config.json").exists()

    report = await wait_split(client, sid)
    assert report["status"] == "done", report
    assert report["job_id"] == job_id and report["progress"] == 1.0
    by_id = {r["race_id"]: r for r in report["races"]}
    assert "after the end of the session video" in by_id[race_ids[3]]["error"]
    assert "video_url" not in by_id[race_ids[3]]

    for rid, (start, duration) in zip(race_ids[:3], RACES):
        race = await json_of(await client.get(f"/races/{rid}"))
        assert race["video_url"] == by_id[rid]["video_url"] and race["video_url"].startswith("/download/")
        clip = await download(client, race["video_url"], tmp_path / f"race-{rid}.mp4")
        got = stream_duration(clip, "video")
        assert duration - FRAME <= got <= duration + GOP_SECONDS + FRAME, (rid, got)
        assert abs(float(ffprobe(clip)["format"]["duration"]) - duration) <= GOP_SECONDS + 0.1
    beyond = await json_of(await client.get(f"/races/{race_ids[3]}"))
    assert beyond["video_url"] is None

    # Asking again for the same split answers the same (finished) job.
    resp = await client.post(f"/sessions/{sid}/split_races")
    again = await resp.json()
    assert resp.status == 202 and again["job_id"] == job_id and again["status"] == "done"


async def test_accurate_split_is_frame_exact(client, video_90s, tmp_path):
    up = await upload(client, video_90s)
    sid, race_ids = await session_with_races(client, up["download"], RACES)
    resp = await client.post(f"/sessions/{sid}/split_races", json={"accurate": True})
    assert resp.status == 202
    report = await wait_split(client, sid, timeout=120)
    assert report["status"] == "done" and report["accurate"] is True, report
    for rid, (start, duration) in zip(race_ids, RACES):
        race = await json_of(await client.get(f"/races/{rid}"))
        clip = await download(client, race["video_url"], tmp_path / f"exact-{rid}.mp4")
        got = stream_duration(clip, "video")
        assert abs(got - duration) <= FRAME + 1e-3, (rid, got)
        assert ffprobe(clip)["streams"][0]["codec_name"] == "h264"
    # Options are part of the job's identity: a copy split is another job.
    resp = await client.post(f"/sessions/{sid}/split_races")
    assert (await resp.json())["job_id"] != report["job_id"]


async def test_split_reads_an_http_source(client, video_90s, tmp_path):
    up = await upload(client, video_90s)
    oid = up["file_id"]
    # Served by the browse route, so ffmpeg really reads it over HTTP (not the local-object shortcut).
    url = str(client.make_url(f"/data/{oid[:2]}/{oid[2:]}/ninety.mp4"))
    sid, race_ids = await session_with_races(client, url, RACES[:2])
    assert (await client.post(f"/sessions/{sid}/split_races")).status == 202
    report = await wait_split(client, sid)
    assert report["status"] == "done", report
    for rid, (start, duration) in zip(race_ids, RACES[:2]):
        race = await json_of(await client.get(f"/races/{rid}"))
        clip = await download(client, race["video_url"], tmp_path / f"http-{rid}.mp4")
        assert duration - FRAME <= stream_duration(clip, "video") <= duration + GOP_SECONDS + FRAME


async def test_changed_race_set_is_a_new_job_and_failed_source_reports_error(client, video_90s):
    up = await upload(client, video_90s)
    sid, race_ids = await session_with_races(client, up["download"], RACES[:1])
    first = await json_of(await client.post(f"/sessions/{sid}/split_races"))
    await wait_split(client, sid)
    resp = await client.put(f"/races/{race_ids[0]}", json={"duration": 10.0})
    assert resp.status == 200
    second = await json_of(await client.post(f"/sessions/{sid}/split_races"))
    assert second["job_id"] != first["job_id"]
    assert (await wait_split(client, sid))["status"] == "done"

    bad = await json_of(await client.post("/sessions", json={"video_url": "http://127.0.0.1:9/none.mp4"}))
    await client.post(f"/sessions/{bad['id']}/races", json={"start_time": 0, "duration": 1})
    assert (await client.post(f"/sessions/{bad['id']}/split_races")).status == 202
    report = await wait_split(client, bad["id"])
    assert report["status"] == "failed" and report["error_message"]


async def test_deleting_a_session_removes_its_split_jobs(client, video_90s, data_dir):
    up = await upload(client, video_90s)
    sid, race_ids = await session_with_races(client, up["download"], RACES)
    assert (await client.post(f"/sessions/{sid}/split_races")).status == 202
    resp = await client.delete(f"/sessions/{sid}")
    assert resp.status == 200
    assert not (data_dir / "sessions" / f"{sid}.split").exists()
    assert (await client.get(f"/sessions/{sid}/split_races")).status == 404
    for rid in race_ids:
        assert (await client.get(f"/races/{rid}")).status == 404


@pytest.fixture
def own_daemon(data_dir):
    d = Daemon(data_dir)
    yield d
    d.stop()


async def test_split_finished_while_daemon_was_down_is_applied_at_start(own_daemon, video_90s, data_dir):
    """The worker outlives a killed daemon; the restarted daemon writes the links, skipping a race edited since."""
    d = own_daemon.start()
    async with aiohttp.ClientSession(d.url) as http:
        with open(video_90s, "rb") as fh:
            up = await json_of(await http.post("/upload", params={"name": "ninety.mp4"}, data=fh))
        sid = (await json_of(await http.post("/sessions", json={"video_url": up["download"]})))["id"]
        race_ids = []
        for start, duration in RACES[:2]:
            resp = await http.post(f"/sessions/{sid}/races", json={"start_time": start, "duration": duration})
            race_ids.append((await json_of(resp))["id"])
        accepted = await json_of(await http.post(f"/sessions/{sid}/split_races"))
    job_dir = data_dir / "sessions" / f"{sid}.split" / accepted["job_id"]

    async def worker_started():
        return (job_dir / "inrun.pid").exists() or (job_dir / "results.json").exists()
    await wait_until(worker_started, timeout=60, what="split worker start")
    d.kill()

    async def results_written():
        return (job_dir / "results.json").exists()
    await wait_until(results_written, timeout=90, what="split results while the daemon is down")
    # An edit the daemon made while the job ran (written the way the record store writes it).
    from storaged.store.atomic import read_json, write_json
    edited = data_dir / "races" / f"{race_ids[1]}.json"
    write_json(edited, {**read_json(edited), "start_time": 31.0})
    assert read_json(data_dir / "races" / f"{race_ids[0]}.json")["video_url"] is None

    d.restart()
    async with aiohttp.ClientSession(d.url) as http:
        async def first_race_linked():
            race = await json_of(await http.get(f"/races/{race_ids[0]}"))
            return race if race["video_url"] else None
        race = await wait_until(first_race_linked, timeout=60, what="race video_url after restart")
        assert race["video_url"].startswith("/download/")
        async with http.get(race["video_url"]) as resp:
            assert resp.status == 200 and len(await resp.read()) > 0
        stale = await json_of(await http.get(f"/races/{race_ids[1]}"))
        assert stale["start_time"] == 31.0 and stale["video_url"] is None
    applied = read_json(job_dir / "applied.json")
    assert applied["applied"] == [race_ids[0]] and applied["skipped"] == [race_ids[1]]
