"""Stream recording: contract errors, the segmenter, clips by wall-clock time, gaps, restarts."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from storaged.supervise.process import read_pidfile
from tests.helpers import duration_of, ffprobe, json_of, wait_until
from tests.live_source import LiveSource, free_udp_port, kill_processes_under, processes_under

FAST = dict(stream_segment_time=2.0, stream_start_timeout=20.0, stream_io_timeout=2.0,
            stream_stall_timeout=10.0, stream_restart_max_backoff=2.0, stream_clip_wait=0.5)


@pytest.fixture(autouse=True)
def no_leftover_ffmpeg(tmp_path: Path):
    """Every segmenter and live source a test starts is gone after it."""
    sources: list[LiveSource] = []
    yield sources
    for s in sources:
        s.stop()
    kill_processes_under(tmp_path)


@pytest.fixture
def live(no_leftover_ffmpeg):
    def make(port: int | None = None) -> LiveSource:
        src = LiveSource(port).start()
        no_leftover_ffmpeg.append(src)
        return src
    return make


@pytest.fixture
async def fast_client(make_client):
    return await make_client(**FAST)


async def call(client, method: str, path: str, **kw):
    resp = await client.request(method, path, **kw)
    return resp.status, await json_of(resp)


async def create(client, url: str, description: str = "") -> int:
    status, out = await call(client, "POST", "/streams/create", json={"url": url, "description": description})
    assert status == 200, out
    return out["stream_id"]


async def status_of(client, sid: int) -> dict:
    status, out = await call(client, "GET", f"/streams/{sid}/status")
    assert status == 200, out
    return out


async def segments_at_least(client, sid: int, n: int, timeout: float = 60) -> dict:
    async def enough():
        st = await status_of(client, sid)
        return st if st["segments"] >= n else None
    return await wait_until(enough, timeout=timeout, what=f"{n} segments of stream {sid}")


async def clip_done(client, sid: int, start: float, stop: float | None = None, timeout: float = 60,
                    mode: str | None = None) -> dict:
    params = {"start": str(start)}
    if stop is not None:
        params["stop"] = str(stop)
    if mode is not None:
        params["mode"] = mode
    seen = set()

    async def done():
        status, out = await call(client, "GET", f"/streams/{sid}/get_clip", params=params)
        assert status == 200, out
        seen.add(out["status"])
        assert out["status"] in ("pending", "processing", "done"), out
        if out["status"] != "done":
            assert "clips" not in out  # links only in the final state
            return None
        return out
    out = await wait_until(done, timeout=timeout, what="clip done")
    out["_seen"] = seen
    return out


def run_dirs(data_dir: Path, sid: int) -> list[Path]:
    return sorted((data_dir / "streams" / str(sid) / "segments").glob("r??????"))


def listed_spans(list_path: Path) -> list[tuple[str, float, float]]:
    """A run's list entries: final name (ffmpeg lists the temp name it wrote), start and end in the run."""
    with open(list_path) as fh:
        return [(row[0].removesuffix(".part"), float(row[1]), float(row[2])) for row in csv.reader(fh) if row]


def listed(list_path: Path) -> list[str]:
    return [name for name, _, _ in listed_spans(list_path)]


# -- contract: create, list, errors ------------------------------------------------------------------------

async def test_create_list_and_every_contract_error_without_a_source(client, data_dir):
    status, out = await call(client, "POST", "/streams/create")
    assert (status, out) == (500, {"error_message": "URL cannot be empty"})
    status, out = await call(client, "GET", "/streams/create", params={"url": "  "})
    assert (status, out) == (500, {"error_message": "URL cannot be empty"})
    status, out = await call(client, "POST", "/streams/create", data={"url": "gopher://cam/1"})
    assert status == 400 and "rtsp" in out["error_message"] and "gopher" in out["error_message"]
    status, out = await call(client, "POST", "/streams/create", json={"url": "-i /etc/passwd"})
    assert status == 400

    # items 1-3 take GET and POST, from the query string, a form or a JSON body; ids are sequential
    s1, a = await call(client, "GET", "/streams/create", params={"url": "rtsp://10.0.0.5/live", "description": "gate"})
    s2, b = await call(client, "POST", "/streams/create", data={"url": "udp://127.0.0.1:5000"})
    s3, c = await call(client, "POST", "/streams/create", json={"url": "http://cam.local/x.ts", "description": "d"})
    assert (s1, s2, s3) == (200, 200, 200)
    assert [a["stream_id"], b["stream_id"], c["stream_id"]] == [1, 2, 3]
    assert (data_dir / "streams" / "1.json").exists()

    for path in ("/streams/", "/streams"):
        status, out = await call(client, "GET", path)
        assert status == 200
        assert [s["id"] for s in out["result"]] == [1, 2, 3]
    st = await status_of(client, 1)
    assert {k: st[k] for k in ("id", "url", "description", "start_date", "stop_date")} == {
        "id": 1, "url": "rtsp://10.0.0.5/live", "description": "gate", "start_date": None, "stop_date": None}
    assert abs(st["create_date"] - time.time()) < 60 and isinstance(st["create_date"], int)
    assert st["recording"] is False and st["segments"] == 0 and st["restarts"] == 0 and st["gaps"] == []

    not_found = {"error_message": "Stream not found"}
    for sid in ("99", "abc", "0", "-1"):
        for method, action in (("POST", "start"), ("GET", "start"), ("POST", "stop"), ("GET", "status")):
            assert await call(client, method, f"/streams/{sid}/{action}") == (404, not_found)
        assert await call(client, "GET", f"/streams/{sid}/get_clip", params={"start": "1"}) == (404, not_found)

    assert await call(client, "POST", "/streams/1/stop") == (500, {"error_message": "Stream not started"})
    assert await call(client, "GET", "/streams/1/get_clip", params={"start": "1700000000"}) == (
        500, {"error_message": "Stream not started"})
    status, out = await call(client, "GET", "/streams/1/get_clip")
    assert status == 400 and "start" in out["error_message"]
    status, out = await call(client, "GET", "/streams/1/get_clip", params={"start": "yesterday"})
    assert status == 400 and "POSIX" in out["error_message"]


async def test_start_fails_with_cannot_start_stream_when_the_source_never_opens(make_client, data_dir, tmp_path):
    client = await make_client(**{**FAST, "stream_start_timeout": 3.0, "stream_io_timeout": 1.0})
    sid = await create(client, f"udp://127.0.0.1:{free_udp_port()}")
    assert await call(client, "POST", f"/streams/{sid}/start") == (500, {"error_message": "Cannot start stream"})
    st = await status_of(client, sid)
    assert st["recording"] is False and st["start_date"] is None and st["pid"] is None
    assert processes_under(tmp_path) == []
    assert not (data_dir / "streams" / str(sid) / "inrun.pid").exists()
    # still "not started" for the contract
    assert await call(client, "POST", f"/streams/{sid}/stop") == (500, {"error_message": "Stream not started"})


# -- recording, clips, stop ------------------------------------------------------------------------------

async def test_record_segments_cut_a_clip_from_the_middle_and_stop_finalises(fast_client, live, data_dir, tmp_path):
    client = fast_client
    src = live()
    sid = await create(client, src.url, "yard camera")
    assert await call(client, "POST", f"/streams/{sid}/start") == (200, {"result": "ok"})
    assert await call(client, "GET", f"/streams/{sid}/start") == (500, {"error_message": "Stream already started"})

    st = await segments_at_least(client, sid, 9)
    assert st["recording"] is True and st["state"] == "recording" and st["pid"]
    assert st["start_date"] is not None and st["bytes"] > 0 and st["last_segment_end"] > st["first_segment_start"]
    (run_dir,) = run_dirs(data_dir, sid)
    name, seg_start, seg_end = listed_spans(run_dir.parent / f"{run_dir.name}.csv")[1]
    info = ffprobe(run_dir / name)  # a finished segment is a playable MPEG-TS with the source's H.264, not re-encoded
    assert info["format"]["format_name"] == "mpegts"
    assert info["streams"][0]["codec_name"] == "h264" and info["streams"][0]["width"] == 160
    # It holds what its list promises.  (How long that is depends on the load: segments are cut at the
    # first keyframe after a wall-clock boundary, so a starved segmenter cuts after one GOP or several.)
    assert seg_end > seg_start
    assert float(info["format"]["duration"]) == pytest.approx(seg_end - seg_start, abs=0.25)

    # a 5 s clip from the middle of what was recorded
    mid = (st["first_segment_start"] + st["last_segment_end"]) / 2
    a, b = round(mid - 2.5, 3), round(mid + 2.5, 3)
    out = await clip_done(client, sid, a, b)
    assert len(out["clips"]) == 1 and out["missing"] == []
    (covered,) = out["covered"]  # from the keyframe at or before a (one GOP: 1 s) to b
    assert a - 1.05 < covered["start"] <= a and covered["stop"] == pytest.approx(b, abs=0.1)
    clip = out["clips"][0]
    assert clip["link"].startswith("http://") and f"/download/{clip['file_id']}/" in clip["link"]
    async with aiohttp.ClientSession() as http:
        async with http.get(clip["link"]) as resp:
            assert resp.status == 200
            body = await resp.read()
    clip_path = tmp_path / "clip.mp4"
    clip_path.write_bytes(body)
    assert abs(duration_of(clip_path) - 5.0) <= 1.0  # within one GOP (25 frames at 25 fps)
    assert "mov" in ffprobe(clip_path)["format"]["format_name"]
    again = await clip_done(client, sid, a, b)
    assert again["clip_id"] == out["clip_id"] and again["clips"][0]["file_id"] == clip["file_id"]
    assert again["_seen"] == {"done"}

    # a range before the recording began: done, no clips, the whole range missing
    early = await clip_done(client, sid, a - 3600, a - 3000)
    assert early["clips"] == [] and early["missing"] == [{"start": a - 3600, "stop": a - 3000}]
    # a stop not recorded yet answers pending while recording
    status, out = await call(client, "GET", f"/streams/{sid}/get_clip",
                             params={"start": str(a), "stop": str(time.time() + 3600)})
    assert status == 200 and out["status"] == "pending" and "clips" not in out

    assert await call(client, "POST", f"/streams/{sid}/stop") == (200, {"result": "ok"})
    assert await call(client, "POST", f"/streams/{sid}/stop") == (500, {"error_message": "Stream not started"})
    st = await status_of(client, sid)
    assert st["recording"] is False and st["state"] == "stopped" and st["stop_date"] is not None
    assert processes_under(tmp_path) == []
    # the last segment was closed properly: every file on disk is in the list, the last one playable
    names = listed(run_dir.parent / f"{run_dir.name}.csv")
    assert sorted(names) == sorted(p.name for p in run_dir.glob("*.ts"))
    assert duration_of(run_dir / names[-1]) > 0

    # clips of a stopped stream still work; without stop: up to the newest segment
    tail = await clip_done(client, sid, b)
    assert len(tail["clips"]) == 1 and tail["stop"] == pytest.approx(st["last_segment_end"], abs=0.01)


async def test_each_run_appears_as_a_live_videostream(fast_client, live):
    client = fast_client
    src = live()
    sid = await create(client, src.url)
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    await segments_at_least(client, sid, 2)

    async def listed_live():
        status, out = await call(client, "GET", "/api/v1/videostreams", params={"capturesource": str(sid)})
        assert status == 200, out
        return out["results"] or None
    (vs,) = await wait_until(listed_live, timeout=30, what="live videostream")
    assert vs["capturesource"] == sid and vs["endTime"] is None
    assert vs["stream_url"].startswith(f"/streams/{sid}/get_clip?start=")
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200
    status, out = await call(client, "GET", f"/api/v1/videostreams/{vs['id']}")
    assert status == 200 and out["endTime"] is not None


async def test_source_killed_and_back_resumes_recording_and_reports_the_gap(fast_client, live, data_dir):
    client = fast_client
    src = live()
    sid = await create(client, src.url)
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    before = await segments_at_least(client, sid, 4)
    src.stop()

    async def restarted():
        st = await status_of(client, sid)
        return st if st["restarts"] >= 1 else None
    await wait_until(restarted, timeout=60, what="segmenter restart after the source died")
    await asyncio.sleep(1.5)  # a real hole of at least this long while nobody publishes
    live(src.port)

    async def resumed():
        st = await status_of(client, sid)
        return st if st["gap_count"] >= 1 and st["segments"] >= before["segments"] + 4 else None
    st = await wait_until(resumed, timeout=90, what="recording resumed after the source came back")
    assert st["recording"] is True
    gap = st["gaps"][0]
    assert gap["duration"] >= 1.0 and gap["start"] >= before["first_segment_start"]
    assert len(run_dirs(data_dir, sid)) >= 2

    # a clip across the gap: two clips and the missing interval between them
    a, b = gap["start"] - 1.5, gap["stop"] + 1.5
    out = await clip_done(client, sid, a, b)
    assert len(out["clips"]) == 2
    assert out["missing"] == [{"start": gap["start"], "stop": gap["stop"]}]
    assert out["clips"][0]["stop"] == pytest.approx(gap["start"], abs=0.1)
    assert out["clips"][1]["start"] == pytest.approx(gap["stop"], abs=0.1)
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200


async def test_daemon_killed_while_recording_comes_back_and_keeps_recording(daemon, live, tmp_path, data_dir):
    src = live()
    d = daemon("--stream-segment-time", "2", "--stream-io-timeout", "2", "--stream-clip-wait", "0.5")
    async with aiohttp.ClientSession(d.url) as client:
        sid = await create(client, src.url)
        assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
        before = await segments_at_least(client, sid, 3)
        pidfile = data_dir / "streams" / str(sid) / "inrun.pid"
        identity = read_pidfile(pidfile)
        assert identity is not None and identity.alive()

        d.kill()  # SIGKILL: the daemon gets no chance to clean up
        assert identity.alive()
        d.restart()
        st = await status_of(client, sid)
        assert st["recording"] is True and st["pid"] == identity.pid  # adopted, not restarted
        after = await segments_at_least(client, sid, before["segments"] + 3)
        assert after["restarts"] == 0 and after["gap_count"] == 0

        assert await call(client, "POST", f"/streams/{sid}/stop") == (200, {"result": "ok"})
        assert not identity.alive() and not pidfile.exists()
        (run_dir,) = run_dirs(data_dir, sid)
        names = listed(run_dir.parent / f"{run_dir.name}.csv")
        on_disk = {p.name: p.stat().st_size for p in run_dir.glob("*.ts")}
        assert sorted(names) == sorted(on_disk), (names, on_disk, (data_dir / "streams" / str(sid) / "ffmpeg.log").read_text())  # SIGINT closed the last one
    # Only the daemon and its own children (the job zygote) may remain; the killed daemon's zygote
    # exits when it sees its stdin close, which may take a moment.
    def strays():
        family = {d.proc.pid, *(c.pid for c in psutil.Process(d.proc.pid).children())}
        return [p for p in processes_under(tmp_path) if p not in family]

    async def none_left():
        return not strays()

    await wait_until(none_left, timeout=30, what=f"no stray processes (left: {strays()})")


def test_a_segment_name_listed_twice_keeps_only_its_last_entry():
    # An older run (names carry the second): ffmpeg reopened (truncated) the file for the later segment.
    from storaged.recording.index import parse_list

    text = ("r000001-20261123T202101Z.ts,8.520000,9.520000\n"
            "r000001-20261123T202101Z.ts,9.520000,10.520000\n"
            "r000001-20261123T202103Z.ts,10.520000,10.600000\n")
    assert [(name[-11:], start) for name, start, _ in parse_list(text)] == [("T202101Z.ts", 9.52),
                                                                          ("T202103Z.ts", 10.52)]


def test_segment_time_below_one_second_is_refused(config):
    from storaged.app import create_app
    from storaged.config import ConfigError

    with pytest.raises(ConfigError, match="stream_segment_time"):
        create_app(config.replace(stream_segment_time=0.5))
    create_app(config.replace(stream_segment_time=1.0))
