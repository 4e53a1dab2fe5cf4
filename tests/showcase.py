"""A daemon with one of everything a person browses: for page tests, the crawl and the screenshots.

``populate(base_url, data_dir, work_dir, Showcase())`` fills a running daemon through its own API (and, for the
camera, the way another program drops images into the tree): an uploaded video with a probe and
thumbnails, an image, a file whose name needs escaping, a session with a race and an event, a stream
that recorded from a live loopback source and was stopped, a camera image of today, and a job still
running.  ``unpopulate`` stops what outlives the daemon (the running job; streams are already stopped).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from tests.helpers import ffmpeg, make_video
from tests.live_source import LiveSource

HOSTILE_NAME = """<b onclick="alert('x')">race & "x".mp4"""


@dataclass
class Showcase:
    video_id: str = ""
    image_id: str = ""
    hostile_id: str = ""
    session_id: int = 0
    stream_id: int = 0
    running_job: str = ""   # /results/<file>/<analysis> of the job left running
    camera_image: str = ""  # /data/camera/... path
    extras: dict = field(default_factory=dict)


async def _json(http: aiohttp.ClientSession, method: str, url: str, ok: tuple[int, ...] = (200, 201, 202), **kw):
    async with http.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None)
        assert resp.status in ok, (method, url, resp.status, body)
        return body


async def _poll(what: str, probe, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def populate(base: str, data_dir: Path, work: Path, show: Showcase) -> Showcase:
    """Fill ``show`` as things are made, so that ``unpopulate(base, show)`` can clean up after a failure too."""
    work.mkdir(parents=True, exist_ok=True)
    video = make_video(work / "ride.mp4", seconds=8, size="320x240")
    image = work / "still.jpg"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:duration=1", "-frames:v", "1", str(image))
    source = LiveSource().start()
    try:
        async with aiohttp.ClientSession() as http:
            show.video_id = (await _json(http, "POST", f"{base}/upload", params={"name": "Morning ride.mp4"},
                                         data=video.read_bytes()))["file_id"]
            show.image_id = (await _json(http, "POST", f"{base}/upload", params={"name": "finish line.jpg"},
                                         data=image.read_bytes()))["file_id"]
            show.hostile_id = (await _json(http, "POST", f"{base}/upload", params={"name": HOSTILE_NAME},
                                           data=b"not really a video")).get("file_id")
            # analyses: thumbnails (and with them the cached probe) finish; a long dummy keeps running
            for analysis, args in (("thumbnails", {"every": 2}), ("probe", {})):
                aid = (await _json(http, "POST", f"{base}/analyse",
                                   json={"file_id": show.video_id, "analysis": analysis, "args": args}))["analysis_id"]

                async def done(aid=aid):
                    async with http.get(f"{base}/results/{show.video_id}/{aid}") as resp:
                        assert resp.status in (200, 202), await resp.text()
                        return resp.status == 200
                await _poll(f"{analysis} done", done)
            aid = (await _json(http, "POST", f"{base}/analyse", json={
                "file_id": show.image_id, "analysis": "dummy", "args": {"seconds": 600}}))["analysis_id"]
            show.running_job = f"/results/{show.image_id}/{aid}"

            async def running():
                # a pending result is 202 with an empty body; its state is in headers
                async with http.get(f"{base}{show.running_job}") as resp:
                    assert resp.status == 202, resp.status
                    return resp.headers.get("X-Job-Status") == "running" and resp.headers.get("X-Job-Progress")
            await _poll("the dummy job running with progress", running)

            # a session with a race and an event
            show.session_id = (await _json(http, "POST", f"{base}/sessions", json={
                "video_url": f"/download/{show.video_id}/Morning%20ride.mp4"}))["id"]
            race = (await _json(http, "POST", f"{base}/sessions/{show.session_id}/races",
                                json={"start_time": 1, "duration": 5}))["id"]
            await _json(http, "POST", f"{base}/sessions/{show.session_id}/events",
                        json={"time": 2.5, "type": "overtake", "race_id": race, "data": {"car": 7}})

            # a stream that recorded a few segments, then stopped
            show.stream_id = (await _json(http, "POST", f"{base}/streams/create",
                                          json={"url": source.url, "description": "Gate <north>"}))["stream_id"]
            await _json(http, "POST", f"{base}/streams/{show.stream_id}/start")

            async def recorded():
                body = await _json(http, "GET", f"{base}/streams/{show.stream_id}/status")
                return body.get("segments", 0) >= 2
            try:
                await _poll("two recorded segments", recorded)
            finally:
                await _json(http, "POST", f"{base}/streams/{show.stream_id}/stop")
    finally:
        source.stop()

    # a camera image of today, dropped in the tree the way any capture program may
    now = datetime.now(timezone.utc)
    day = data_dir / "camera" / "1" / now.strftime("%Y%m%d")
    day.mkdir(parents=True, exist_ok=True)
    name = now.strftime("%Y%m%d-%H%M%S-000.jpg")
    (day / name).write_bytes(image.read_bytes())
    show.camera_image = f"/data/camera/1/{day.name}/{name}"
    return show


async def unpopulate(base: str, show: Showcase) -> None:
    """Cancel the job left running (workers outlive the daemon by design)."""
    if show.running_job:
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{base}{show.running_job}") as resp:
                await resp.read()
                assert resp.status in (200, 404), resp.status
