"""specs/camera-storage.md, as its client (the Chimera front end) uses it: motion status, images to an mp4
and a zip (createVideo/createZip, statusProcess, listProcess), frames for scrubbing, the share
(/shared/captures as a page, files downloaded), disk usage and cleanup, cancel and delete."""

from __future__ import annotations

import io
import re
import zipfile

from tests.helpers import ffprobe, plant_camera_images, wait_until

PROCESS_KEYS = {"link", "type", "id", "requested", "camera", "start", "end", "running"}


async def test_chimera_client_session(daemon, http, data_dir, tmp_path):
    images = plant_camera_images(data_dir, "1", "20240101-080000", count=10)
    d = daemon(data_dir=data_dir)

    async def post(path, body=None):
        async with http.post(d.url + path, json=body) as r:
            return r.status, await r.json(content_type=None)

    async with http.get(f"{d.url}/motion/status") as r:
        assert r.status == 200

    # createVideo: { camera, fps, save, start: Date or YYYYMMDD-HHMMSS, end, skip } -> { id, url, frameLimitMet }
    status, video = await post("/convert/createVideo", {"camera": 1, "fps": 5, "save": True,
                                                       "start": "20240101-080000", "end": "2024-01-01T08:30:00",
                                                       "skip": 0})
    assert status == 200 and set(video) >= {"id", "url", "frameLimitMet"} and video["frameLimitMet"] is False
    assert re.fullmatch(r"[A-Za-z0-9]{8}-\d{8}-\d{6}", video["id"])
    assert video["url"] == f"/shared/captures/output_1_20240101-080000_20240101-083000_{video['id']}.mp4"

    async def finished(pid):
        status, out = await post("/convert/statusProcess", {"id": pid})
        assert status == 200 and out["id"] == pid and isinstance(out["running"], bool)
        return out if not out["running"] else None

    await wait_until(lambda: finished(video["id"]), timeout=90, what="createVideo done")
    async with http.get(d.url + video["url"]) as r:
        assert r.status == 200
        (tmp_path / "out.mp4").write_bytes(await r.read())
    assert int(ffprobe(tmp_path / "out.mp4")["streams"][0]["nb_frames"]) == 10

    # createZip
    status, zipped = await post("/convert/createZip", {"camera": 1, "save": True, "start": "20240101-080000",
                                                      "end": "20240101-090000", "skip": 1})
    assert status == 200 and zipped["url"].endswith(".zip")
    await wait_until(lambda: finished(zipped["id"]), timeout=90, what="createZip done")
    async with http.get(d.url + zipped["url"]) as r:
        members = zipfile.ZipFile(io.BytesIO(await r.read())).namelist()
    assert members == [p.name for p in images[::2]]  # skip 1: every second image

    # listProcess -> { list: [ProcessObj] }
    status, listed = await post("/convert/listProcess")
    assert status == 200 and [p["id"] for p in listed["list"]] == [video["id"], zipped["id"]]
    assert all(set(p) >= PROCESS_KEYS for p in listed["list"])
    assert listed["list"][0]["type"] == "mp4" and listed["list"][1]["type"] == "zip"
    assert listed["list"][0]["link"] == video["url"] and listed["list"][0]["camera"] == 1

    # listFramesVideo -> { list: [ String ] } of links for scrubbing
    status, frames = await post("/convert/listFramesVideo", {"camera": 1, "start": "20240101-080000",
                                                             "end": "20240101-090000", "frames": 4})
    assert status == 200 and len(frames["list"]) == 4
    async with http.get(d.url + frames["list"][0]) as r:
        assert r.status == 200 and (await r.read())[:2] == b"\xff\xd8"

    # /shared/directory opens as a web page; /shared/directory/file downloads.
    async with http.get(f"{d.url}/shared/captures/") as r:
        page = await r.text()
    assert r.status == 200 and r.content_type == "text/html" and video["url"].rsplit("/", 1)[1] in page

    # /file: size, count, clean, delete
    status, size = await post("/file/pathSize", {"camera": 1})
    assert status == 200 and isinstance(size["size"], str) and size["size"].endswith("B")
    status, count = await post("/file/pathFileCount", {"camera": 1})
    assert status == 200 and count["count"] == 10
    status, cleaned = await post("/file/pathClean", {"camera": 1, "days": 365 * 100})
    assert status == 200 and cleaned["deleted"] is True and cleaned["confidence"] == 1.0
    status, deleted = await post("/file/pathDelete", {"camera": 1})
    assert status == 200 and deleted["deleted"] is True
    status, count = await post("/file/pathFileCount", {"camera": 1})
    assert count["count"] == 0

    # deleteProcess: the output goes with it; cancelProcess of a finished one says false.
    status, cancelled = await post("/convert/cancelProcess", {"id": zipped["id"]})
    assert status == 200 and cancelled["cancelled"] is False and cancelled["id"] == zipped["id"]
    status, out = await post("/convert/deleteProcess", {"id": video["id"]})
    assert status == 200 and out["deleted"] is True and out["id"] == video["id"]
    async with http.get(d.url + video["url"]) as r:
        assert r.status == 404


async def test_wrong_typed_fields_are_400s_that_say_so_not_missing(daemon, http, data_dir):
    plant_camera_images(data_dir, "1", "20240101-080000", count=2)
    d = daemon(data_dir=data_dir)
    cases = [("/file/pathSize", {"camera": "1"}, 'camera must be a camera number (an integer) (got "1", a JSON string)'),
             ("/convert/statusProcess", {"id": 123}, "id must be a process id (a string)"),
             ("/file/pathClean", {"camera": 1, "days": "30"}, 'days must be'),
             ("/convert/createVideo", {"camera": 1, "fps": "10", "start": "20240101-080000",
                                       "end": "20240101-090000"}, 'fps must be'),
             ("/convert/createZip", {"camera": 1, "start": 20240101, "end": "20240101-090000"}, "start must be"),
             ("/file/pathSize", {}, "camera is required")]
    for path, body, words in cases:
        async with http.post(d.url + path, json=body) as r:
            message = (await r.json())["error_message"]
        assert r.status == 400 and words in message, (path, body, message)
