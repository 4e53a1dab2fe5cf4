"""Playback without cutting: recorded spans, HLS playlists, progressive MP4, the timeline page.

The recording is made by ffmpeg's segment muxer in the segmenter's layout and
finished by the daemon's own finisher: run 1 holds 60 s, then 20 s of
nothing, then run 2 holds 30 s (2 s segments, a keyframe every second, H.264
+ AAC).  Each segment's mtime is set to when it would have been closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from storaged.recording import index as idx
from tests.browser import Browser
from tests.helpers import ffmpeg, wait_until
from tests.live_source import processes_under

T0 = 1_790_000_000.0  # a whole minute, UTC
RUNS = ((1, 0.0, 60), (2, 80.0, 30))  # run, offset from T0, seconds
GOP = 1.0


def build_run(seg_dir: Path, run: int, begin: float, seconds: int) -> None:
    (seg_dir / idx.run_dir_name(run)).mkdir(parents=True)
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
           "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-f", "segment", "-segment_format", "mpegts", "-segment_time", "2", "-reset_timestamps", "1",
           "-segment_list", str(seg_dir / idx.list_name(run)), "-segment_list_type", "csv",
           str(seg_dir / idx.run_dir_name(run) / idx.segment_pattern(run)))
    for name, a, b in idx.read_list(seg_dir / idx.list_name(run)):
        os.utime(seg_dir / idx.run_dir_name(run) / (name + idx.PART), (begin + b, begin + b))
    idx.finalize_run(seg_dir, run, live=False)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    seg_dir = tmp_path_factory.mktemp("rec") / "segments"
    for run, offset, seconds in RUNS:
        build_run(seg_dir, run, T0 + offset, seconds)
    return seg_dir


@pytest.fixture
async def stream(client, data_dir, recording) -> int:
    resp = await client.post("/streams/create", json={"url": "udp://127.0.0.1:9"})
    sid = (await resp.json())["stream_id"]
    (data_dir / "streams" / str(sid)).mkdir(exist_ok=True)
    subprocess.run(["cp", "-a", str(recording), str(data_dir / "streams" / str(sid) / "segments")], check=True)
    return sid


def probe(target: str, *entries: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", *entries, target],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def video_seconds(path: Path) -> float:
    """First video frame to the end of the last, from the packets (a fragmented MP4's header has no duration)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "packet=pts_time,duration_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [tuple(float(x) for x in line.split(",")[:2]) for line in out.splitlines() if line.strip()]
    return max(p + d for p, d in rows) - min(p for p, _ in rows)


async def test_recordings_lists_spans_and_gaps(client, stream):
    resp = await client.get(f"/streams/{stream}/recordings", params={"start": str(T0 - 10), "end": str(T0 + 120)})
    assert resp.status == 200
    out = await resp.json()
    assert [(round(s["start"] - T0), round(s["end"] - T0)) for s in out["spans"]] == [(0, 60), (80, 110)]
    assert [(round(g["start"] - T0), round(g["end"] - T0)) for g in out["gaps"]] == [(-10, 0), (60, 80), (110, 120)]
    assert out["spans"][0]["segments"] == 30 and out["recorded"] == pytest.approx(90, abs=0.1)
    bad = await client.get(f"/streams/{stream}/recordings", params={"start": "soon"})
    assert bad.status == 400 and "start" in (await bad.json())["error_message"]
    missing = await client.get("/streams/99/recordings")
    assert missing.status == 404 and (await missing.json()) == {"error_message": "Stream not found"}


async def test_hls_playlist_plays_the_range_across_the_gap(client, stream, tmp_path):
    start, end = T0 + 10.5, T0 + 100.2
    path = f"/streams/{stream}/playlist.m3u8?start={start}&end={end}"
    url = str(client.make_url(path))
    text = await (await client.get(path)).text()
    assert text.startswith("#EXTM3U") and text.rstrip().endswith("#EXT-X-ENDLIST")
    assert text.count("#EXT-X-DISCONTINUITY") == 1
    dates = re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)", text)
    first = datetime.fromisoformat(dates[0].replace("Z", "+00:00")).timestamp()
    assert first <= start and start - first < 2.0 + GOP  # whole segments: the one holding start
    # ffprobe reads the playlist: whole segments from 10 to 60 and 80 to 102
    # (in a thread: the server answering ffprobe runs on this test's event loop)
    duration = float((await asyncio.to_thread(probe, url, "-show_format"))["format"]["duration"])
    assert duration == pytest.approx(50 + 22, abs=GOP)
    # ffmpeg copies it through the gap
    out = tmp_path / "copy.ts"
    await asyncio.to_thread(ffmpeg, "-i", url, "-c", "copy", str(out))
    frames = probe(str(out), "-select_streams", "v", "-count_packets", "-show_streams")["streams"][0]
    assert int(frames["nb_read_packets"]) == pytest.approx(72 * 25, abs=25)

    live = await (await client.get(f"/streams/{stream}/playlist.m3u8")).text()
    assert "#EXT-X-ENDLIST" not in live and live.count("#EXTINF") == 6
    assert "#EXT-X-MEDIA-SEQUENCE:9" in live  # run 2's segments 9..14


async def test_segments_are_served_with_range_and_a_long_cache(client, stream):
    text = await (await client.get(f"/streams/{stream}/playlist.m3u8", params={"start": str(T0)})).text()
    uri = next(line for line in text.splitlines() if line.endswith(".ts"))
    resp = await client.get(f"/streams/{stream}/{uri}", headers={"Range": "bytes=0-187"})
    assert resp.status == 206 and len(await resp.read()) == 188
    assert "immutable" in resp.headers["Cache-Control"] and resp.headers["Content-Type"] == "video/mp2t"
    for bad in ("segments/r000001/../../1.json", "segments/r000001/r000002-000000.ts", "segments/x/y.ts"):
        assert (await client.get(f"/streams/{stream}/{bad}")).status == 404


async def test_progressive_mp4_starts_at_the_keyframe_and_plays_through_the_gap(client, stream, tmp_path):
    start = T0 + 10.5
    resp = await client.get(f"/streams/{stream}/play.mp4", params={"start": str(start), "end": str(start + 10)})
    assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
    first = float(resp.headers["X-First-Frame-Time"])
    assert first <= start and start - first < GOP + 0.01
    path = tmp_path / "a.mp4"
    path.write_bytes(await resp.read())
    info = probe(str(path), "-show_format", "-show_streams")
    assert video_seconds(path) == pytest.approx(10 + (start - first), abs=0.2)
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac"}

    across = await client.get(f"/streams/{stream}/play.mp4", params={"start": str(T0 + 55), "end": str(T0 + 85)})
    path.write_bytes(await across.read())
    lead = T0 + 55 - float(across.headers["X-First-Frame-Time"])
    assert 0 <= lead < GOP + 0.01
    assert video_seconds(path) == pytest.approx(10 + lead, abs=0.3)  # 5 s before the gap, 5 s after
    nothing = await client.get(f"/streams/{stream}/play.mp4", params={"start": str(T0 + 62), "end": str(T0 + 70)})
    assert nothing.status == 404


def playback_ffmpegs(tmp_path: Path) -> list[int]:
    """ffmpeg processes reading a playback's concat script under the test's data directory."""
    out = []
    for pid in processes_under(tmp_path):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"ffmpeg") and any(b".ffconcat" in arg for arg in cmdline):
            out.append(pid)
    return out


async def test_a_client_that_leaves_mid_stream_leaves_no_ffmpeg(client, stream, tmp_path):
    url = client.make_url(f"/streams/{stream}/play.mp4?start={T0}")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            await resp.content.readexactly(1000)
            assert playback_ffmpegs(tmp_path), "ffmpeg should be streaming"
            resp.close()  # the client goes away mid-body: its connection is closed

    async def gone():
        return not playback_ffmpegs(tmp_path)
    await wait_until(gone, timeout=20, what="ffmpeg stopped after the client left")


async def test_an_uploaded_video_plays_by_time_range(client, video_10s, tmp_path):
    with open(video_10s, "rb") as fh:
        up = await client.post("/upload?name=ten.mp4", data=fh)
    fid = (await up.json())["file_id"]
    resp = await client.get(f"/play/{fid}", params={"start": "3.5", "end": "7"})
    assert resp.status == 200
    path = tmp_path / "u.mp4"
    path.write_bytes(await resp.read())
    assert video_seconds(path) == pytest.approx(3.5, abs=GOP)
    assert (await client.get(f"/play/{fid}", params={"start": "x"})).status == 400


async def test_timeline_page_plays_the_recording_in_chromium(client, stream):
    day = datetime.fromtimestamp(T0, timezone.utc).date().isoformat()
    resp = await client.get(f"/streams/{stream}/timeline", params={"day": day})
    assert resp.status == 200
    html = await resp.text()
    assert html.count('class="span"') == 2 and f'/streams/{stream}/play.mp4?start=' in html
    async with Browser() as browser:
        page = await browser.new_page()
        await page.goto(str(client.make_url(f"/streams/{stream}/timeline?day={day}")))
        await page.evaluate("document.querySelector('a[data-start]').click()")
        played = await page.wait_for(
            "(v => !v.error && v.currentTime > 1 && v.currentTime)(document.getElementById('player'))", timeout=30)
        assert played > 1


async def test_timeline_marks_motion_images_of_the_day_and_plays_from_one(client, stream, data_dir):
    """The camera family's motion images appear on the stream's day scale, linked, and a click plays there."""
    from storaged.camera import images

    when = datetime.fromtimestamp(T0 + 20, timezone.utc).replace(tzinfo=None)  # the box's zone is UTC here
    day_dir = data_dir / "camera" / "3" / images.day_folder(when)
    day_dir.mkdir(parents=True)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1", "-frames:v", "1",
           str(day_dir / images.image_name(when)))
    day = datetime.fromtimestamp(T0, timezone.utc).date().isoformat()
    html = await (await client.get(f"/streams/{stream}/timeline", params={"day": day})).text()
    marks = re.findall(r'<a class="mark" href="([^"]+)" data-start="([0-9.]+)"', html)
    assert [float(t) for _, t in marks] == [T0 + 20]
    assert (await client.get(marks[0][0])).status == 200  # the link opens the image
    async with Browser() as browser:
        page = await browser.new_page()
        await page.goto(str(client.make_url(f"/streams/{stream}/timeline?day={day}")))
        await page.evaluate("document.querySelector('a.mark').click()")
        src = await page.wait_for("document.getElementById('player').src", timeout=30)
        assert f"start={T0 + 20:.3f}" in src


async def test_timeline_links_the_nearest_recorded_days_and_none_past_the_recording(client, stream):
    recorded = datetime.fromtimestamp(T0, timezone.utc).date()

    async def linked_days(day: date) -> list[str]:
        resp = await client.get(f"/streams/{stream}/timeline", params={"day": day.isoformat()})
        assert resp.status == 200
        return re.findall(rf"/streams/{stream}/timeline\?day=([0-9-]+)", await resp.text())

    assert await linked_days(recorded) == []  # the only recorded day: nothing before or after it to visit
    assert await linked_days(recorded + timedelta(days=10)) == [recorded.isoformat()]
    assert await linked_days(recorded - timedelta(days=3)) == [recorded.isoformat()]
