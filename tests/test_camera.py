"""Camera storage: images -> mp4/zip processes, frame lists, disk usage and cleanup, the share."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from yarl import URL

from storaged.camera import images, usage
from tests.helpers import ffmpeg, ffprobe, json_of, wait_until, wait_until_sync

BASE = datetime(2024, 1, 1, 23, 59, 30)  # 500 images 200 ms apart: crosses midnight
STEP = timedelta(milliseconds=200)
N = 500


def name_at(i: int, base: datetime = BASE, step: timedelta = STEP) -> str:
    return images.image_name(base + i * step)


@pytest.fixture(scope="session")
def raw_frames(tmp_path_factory) -> list[Path]:
    """500 tiny JPEGs from ONE ffmpeg command."""
    d = tmp_path_factory.mktemp("frames")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-frames:v", str(N), "-q:v", "8",
           str(d / "%04d.jpg"))
    return sorted(d.glob("*.jpg"))


@pytest.fixture(scope="session")
def big_frames(tmp_path_factory) -> list[Path]:
    """Noisy 640x360 frames: slow enough to encode that a job is still running when we act."""
    d = tmp_path_factory.mktemp("bigframes")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25,noise=alls=40:allf=t", "-frames:v", "400",
           "-q:v", "5", str(d / "%04d.jpg"))
    return sorted(d.glob("*.jpg"))


def place(frames: list[Path], data_dir: Path, camera: int = 1, base: datetime = BASE,
          step: timedelta = STEP) -> list[Path]:
    """Link the frames into the camera's folders under capture-time names."""
    out = []
    for i, src in enumerate(frames):
        when = base + i * step
        dst = data_dir / "camera" / str(camera) / images.day_folder(when) / images.image_name(when)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
        out.append(dst)
    return out


@pytest.fixture
def cam1(raw_frames, data_dir) -> list[Path]:
    return place(raw_frames, data_dir)


async def post(client, path: str, body=None):
    resp = await client.post(path, json=body) if body is not None else await client.post(path)
    return resp.status, await json_of(resp)


async def finished(client, pid: str, timeout: float = 90) -> dict:
    async def done():
        status, out = await post(client, "/convert/statusProcess", {"id": pid})
        assert status == 200, out
        return out if not out["running"] else None
    return await wait_until(done, timeout=timeout, what=f"process {pid}")


def count_frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip())


FULL = {"camera": 1, "start": "20240101-235930", "end": "20240102-000200"}


# -- convert -------------------------------------------------------------------------

async def test_create_video_from_500_images_has_every_frame(client, cam1, data_dir):
    status, out = await post(client, "/convert/createVideo", {**FULL, "fps": 25, "save": True, "skip": 0})
    assert status == 200, out
    assert set(out) == {"id", "url", "frameLimitMet"} and out["frameLimitMet"] is False
    assert re.fullmatch(r"[A-Za-z0-9]{8}-\d{8}-\d{6}", out["id"])
    name = f"output_1_20240101-235930_20240102-000200_{out['id']}.mp4"
    assert out["url"] == f"/shared/captures/{name}"
    done = await finished(client, out["id"])
    assert done["status"] == "done" and done["frames"] == N
    path = data_dir / "shared" / "captures" / name
    assert count_frames(path) == N
    video = ffprobe(path)["streams"][0]
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (160, 120)
    assert abs(float(ffprobe(path)["format"]["duration"]) - N / 25) < 0.1
    # faststart: the moov atom comes before mdat
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
    # no list file or partial output left behind in the job directory
    job = data_dir / "camera" / "processes" / out["id"]
    assert not (job / "frames.ffconcat").exists() and not (job / "output.mp4").exists()
    resp = await client.get(out["url"], headers={"Range": "bytes=0-99"})
    assert resp.status == 206 and len(await resp.read()) == 100


async def test_process_obj_is_listed_exactly_as_the_contract(client, cam1):
    _, out = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 9})
    status, listed = await post(client, "/convert/listProcess")
    assert status == 200
    [obj] = listed["list"]
    assert set(obj) == {"link", "type", "id", "requested", "camera", "start", "end", "running"}
    assert obj["id"] == out["id"] and obj["type"] == "zip" and obj["camera"] == 1
    assert obj["start"] == "20240101-235930" and obj["end"] == "20240102-000200"
    assert obj["link"] == out["url"] and obj["id"].endswith("-" + obj["requested"])
    assert re.fullmatch(r"\d{8}-\d{6}", obj["requested"])
    await finished(client, out["id"])
    _, listed = await post(client, "/convert/listProcess", {})
    assert listed["list"][0]["running"] is False


async def test_processes_are_listed_oldest_request_first_within_one_second(client, cam1, monkeypatch):
    """Ids carry the request's second and a random prefix: three requests in one second whose prefixes
    sort against their order are still listed in the order they were made (the contract test met this)."""
    from storaged.camera import convert
    prefixes = iter(["ZZZZZZZZ", "MMMMMMMM", "AAAAAAAA"])
    monkeypatch.setattr(convert, "new_process_id", lambda requested: next(prefixes) + "-20240101-080000")
    made = []
    for _ in range(3):
        status, out = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 9})
        assert status == 200, out
        made.append(out["id"])
    _, listed = await post(client, "/convert/listProcess")
    assert [p["id"] for p in listed["list"]] == made == ["ZZZZZZZZ-20240101-080000", "MMMMMMMM-20240101-080000",
                                                         "AAAAAAAA-20240101-080000"]
    for pid in made:
        await finished(client, pid)


async def test_create_zip_is_stored_and_skip_takes_every_nth(client, cam1, data_dir):
    status, out = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 4})
    assert status == 200 and out["frameLimitMet"] is False
    done = await finished(client, out["id"])
    assert done["status"] == "done"
    path = data_dir / out["url"].lstrip("/")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [name_at(i) for i in range(0, N, 5)]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.read(infos[1].filename) == cam1[5].read_bytes()


async def test_skip_in_a_video_and_a_sub_range(client, cam1, data_dir):
    # 00:00:00 .. 00:00:09 inclusive = images 150..199 (50), skip 1 -> 25
    body = {"camera": 1, "start": "2024-01-02T00:00:00", "end": "20240102-000009", "fps": 5, "skip": 1}
    _, out = await post(client, "/convert/createVideo", body)
    await finished(client, out["id"])
    assert count_frames(data_dir / out["url"].lstrip("/")) == 25


async def test_frame_limit_caps_the_count_and_sets_frame_limit_met(make_client, cam1, data_dir):
    client = await make_client(camera_frame_limit=40)
    _, out = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 0})
    assert out["frameLimitMet"] is True
    await finished(client, out["id"])
    with zipfile.ZipFile(data_dir / out["url"].lstrip("/")) as zf:
        assert [i.filename for i in zf.infolist()] == [name_at(i) for i in range(40)]
    _, out = await post(client, "/convert/createVideo", {**FULL, "fps": 10, "skip": 19})  # 25 selected
    assert out["frameLimitMet"] is False
    await finished(client, out["id"])
    assert count_frames(data_dir / out["url"].lstrip("/")) == 25
    _, out = await post(client, "/convert/createVideo", {**FULL, "fps": 10, "skip": 9})  # 50 selected
    assert out["frameLimitMet"] is True
    await finished(client, out["id"])
    assert count_frames(data_dir / out["url"].lstrip("/")) == 40


async def test_list_frames_video_answers_evenly_spaced_links(client, cam1):
    status, out = await post(client, "/convert/listFramesVideo", {**FULL, "frames": 5})
    assert status == 200
    wanted = [0, 125, 250, 374, 499]  # round(k * 499 / 4)
    expect = [f"/data/camera/1/{images.day_folder(BASE + i * STEP)}/{name_at(i)}" for i in wanted]
    assert out == {"list": expect}
    resp = await client.get(out["list"][2])
    assert resp.status == 200 and await resp.read() == cam1[250].read_bytes()
    _, out = await post(client, "/convert/listFramesVideo", {**FULL, "frames": 1000})
    assert len(out["list"]) == N


async def test_iso_times_with_an_offset_are_converted_to_the_box_time_zone(make_client, raw_frames, data_dir):
    client = await make_client(timezone="Europe/Berlin")
    place(raw_frames[:10], data_dir, camera=2, base=datetime(2024, 6, 1, 12, 0, 0), step=timedelta(seconds=1))
    # 10:00:03Z .. 10:00:05Z is 12:00:03 .. 12:00:05 in Berlin (summer time)
    body = {"camera": 2, "start": "2024-06-01T10:00:03Z", "end": "2024-06-01T10:00:05+00:00", "frames": 10}
    _, out = await post(client, "/convert/listFramesVideo", body)
    assert [u.rsplit("/", 1)[1] for u in out["list"]] == [
        "20240601-120003-000.jpg", "20240601-120004-000.jpg", "20240601-120005-000.jpg"]


async def test_unsaved_output_expires_and_saved_output_stays(make_client, cam1, data_dir):
    client = await make_client(camera_output_expiry=1.0)
    _, kept = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 49})
    _, temp = await post(client, "/convert/createZip", {**FULL, "save": False, "skip": 49})
    await finished(client, kept["id"])
    await finished(client, temp["id"])
    temp_path = data_dir / temp["url"].lstrip("/")

    async def expired():
        _, listed = await post(client, "/convert/listProcess")
        return not temp_path.exists() and [p["id"] for p in listed["list"]] == [kept["id"]]
    await wait_until(expired, timeout=30, what="expiry of the unsaved output")
    assert (data_dir / kept["url"].lstrip("/")).exists()
    status, _ = await post(client, "/convert/statusProcess", {"id": temp["id"]})
    assert status == 404


async def test_delete_process_removes_the_output_and_the_process(client, cam1, data_dir):
    _, out = await post(client, "/convert/createZip", {**FULL, "save": True, "skip": 9})
    await finished(client, out["id"])
    path = data_dir / out["url"].lstrip("/")
    assert path.exists()
    status, res = await post(client, "/convert/deleteProcess", {"id": out["id"]})
    assert (status, res) == (200, {"deleted": True, "id": out["id"]})
    assert not path.exists() and not (data_dir / "camera" / "processes" / out["id"]).exists()
    status, res = await post(client, "/convert/deleteProcess", {"id": out["id"]})
    assert status == 404 and "error_message" in res


def group_alive(pgid: int) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


async def test_cancel_mid_run_stops_ffmpeg_and_removes_the_partial_output(client, big_frames, data_dir):
    place(big_frames, data_dir, camera=3, base=datetime(2024, 2, 1, 8, 0, 0), step=timedelta(seconds=1))
    body = {"camera": 3, "start": "20240201-080000", "end": "20240201-090000", "fps": 25, "save": True}
    _, out = await post(client, "/convert/createVideo", body)
    job = data_dir / "camera" / "processes" / out["id"]

    async def encoding():
        _, st = await post(client, "/convert/statusProcess", {"id": out["id"]})
        assert st["running"], st
        return (job / "output.mp4").exists() and (job / "inrun.pid").exists()
    await wait_until(encoding, timeout=60, what="ffmpeg writing the partial output")
    pgid = json.loads((job / "inrun.pid").read_text())["pid"]
    assert group_alive(pgid)
    status, res = await post(client, "/convert/cancelProcess", {"id": out["id"]})
    assert (status, res) == (200, {"cancelled": True, "id": out["id"]})
    assert not group_alive(pgid)  # the worker and its ffmpeg are gone
    assert not job.exists()
    assert os.listdir(data_dir / "shared" / "captures") == []
    status, _ = await post(client, "/convert/statusProcess", {"id": out["id"]})
    assert status == 404


def test_process_survives_a_daemon_restart_and_completes(daemon, big_frames, data_dir):
    place(big_frames, data_dir, camera=4, base=datetime(2024, 3, 1, 8, 0, 0), step=timedelta(seconds=1))
    d = daemon()

    def call(path, body=None):
        req = aiohttp_free_post(d.url + path, body)
        return req

    out = call("/convert/createVideo", {"camera": 4, "start": "20240301-080000", "end": "20240301-090000",
                                        "fps": 25, "save": True})
    job = data_dir / "camera" / "processes" / out["id"]
    wait_until_sync(lambda: (job / "inrun.pid").exists(), timeout=60, what="the worker")
    d.restart()  # SIGKILL the daemon while the worker encodes, start a new one on the same tree
    listed = call("/convert/listProcess")["list"]
    assert [p["id"] for p in listed] == [out["id"]]

    def finished_sync():
        st = call("/convert/statusProcess", {"id": out["id"]})
        return st if not st["running"] else None
    st = wait_until_sync(finished_sync, timeout=120, what="the adopted process")
    assert st["status"] == "done"
    assert count_frames(data_dir / out["url"].lstrip("/")) == len(big_frames)


def aiohttp_free_post(url: str, body=None) -> dict:
    """A blocking JSON POST with the standard library (the daemon test is synchronous)."""
    import urllib.request
    data = json.dumps(body if body is not None else {}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("path,body,status", [
    ("/convert/createVideo", {**FULL, "fps": 25, "camera": 9}, 404),
    ("/convert/createVideo", {**FULL, "fps": 25, "camera": "1"}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "camera": True}, 400),
    ("/convert/createVideo", {**FULL, "fps": -1}, 400),
    ("/convert/createVideo", {**FULL, "fps": 0}, 400),
    ("/convert/createVideo", {**FULL, "fps": "25"}, 400),
    ("/convert/createVideo", {**FULL}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "skip": -1}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "skip": 1.5}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "save": "yes"}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "start": "2024-13-45"}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "start": "yesterday"}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "start": 20240101}, 400),
    ("/convert/createVideo", {**FULL, "fps": 25, "start": "20240103-000000"}, 400),  # after end
    ("/convert/createVideo", {**FULL, "fps": 25, "start": "20230101-000000", "end": "20230102-000000"}, 400),
    ("/convert/createZip", {**FULL, "skip": -3}, 400),
    ("/convert/createZip", [1, 2], 400),
    ("/convert/listFramesVideo", {**FULL, "frames": 0}, 400),
    ("/convert/listFramesVideo", {**FULL, "frames": "5"}, 400),
    ("/convert/statusProcess", {"id": "abcdefgh-20240101-000000"}, 404),
    ("/convert/statusProcess", {"id": "../../etc"}, 404),
    ("/convert/statusProcess", {"id": 5}, 400),
    ("/convert/cancelProcess", {"id": "zzzzzzzz-20240101-000000"}, 404),
    ("/convert/deleteProcess", {}, 400),
    ("/file/pathSize", {"camera": 77}, 404),
    ("/file/pathClean", {"camera": 1, "days": -1}, 400),
    ("/file/pathClean", {"camera": 1}, 400),
    ("/file/pathDelete", {"camera": -1}, 400),
])
async def test_bad_input_is_rejected_and_changes_nothing(client, cam1, data_dir, path, body, status):
    got, out = await post(client, path, body)
    assert got == status, out
    assert set(out) == {"error_message"} and out["error_message"]
    assert sorted(os.listdir(data_dir / "camera")) == ["1", "processes"]
    assert os.listdir(data_dir / "camera" / "processes") == []
    assert usage.usage(data_dir / "camera" / "1")[1] == N


async def test_malformed_json_body_is_400(client, cam1):
    resp = await client.post("/convert/createVideo", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "error_message" in await resp.json()


# -- files ---------------------------------------------------------------------------

async def test_path_size_and_file_count(client, cam1):
    expected = sum(p.stat().st_size for p in cam1)
    status, out = await post(client, "/file/pathSize", {"camera": 1})
    assert status == 200 and out["bytes"] == expected
    assert out["size"] == usage.human_size(expected) and out["size"].endswith(" MB")
    _, out = await post(client, "/file/pathFileCount", {"camera": 1})
    assert out == {"count": N}


def test_human_size_reads_like_a_disk():
    assert usage.human_size(0) == "0 B"
    assert usage.human_size(999) == "999 B"
    assert usage.human_size(1_400_000_000) == "1.4 GB"
    assert usage.human_size(2_500_000) == "2.5 MB"


async def test_path_clean_deletes_only_images_older_than_n_days(client, raw_frames, data_dir):
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # the box zone is UTC by default
    ages = [0.5, 1.5, 2.5, 4.0, 10.0]  # days
    placed = [place([raw_frames[i]], data_dir, camera=5, base=now - timedelta(days=a))[0]
              for i, a in enumerate(ages)]
    stray = data_dir / "camera" / "5" / "notes.txt"  # not an image name: its mtime counts
    stray.write_text("x")
    old = (now - timedelta(days=6)).timestamp()
    os.utime(stray, (old, old))
    status, out = await post(client, "/file/pathClean", {"camera": 5, "days": 2})
    assert status == 200 and out == {"deleted": True, "confidence": 1.0, "count": 4}
    assert [p.exists() for p in placed] == [True, True, False, False, False]
    assert not stray.exists()
    # empty day folders are removed with their last image
    assert sorted(os.listdir(data_dir / "camera" / "5")) == sorted({p.parent.name for p in placed[:2]})
    _, out = await post(client, "/file/pathClean", {"camera": 5, "days": 2})
    assert out == {"deleted": True, "confidence": 1.0, "count": 0}


def test_clean_confidence_is_the_share_really_gone(raw_frames, tmp_path, monkeypatch):
    placed = place(raw_frames[:4], tmp_path, camera=9, base=datetime(2020, 1, 1))
    cam = tmp_path / "camera" / "9"
    real_unlink = os.unlink
    stuck = str(placed[1])

    def unlink(path, *a, **kw):
        if str(path) == stuck:
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *a, **kw)
    monkeypatch.setattr(usage.os, "unlink", unlink)
    meant, gone = usage.clean_older(cam, datetime(2021, 1, 1), 0)
    assert (meant, gone) == (4, 3)
    assert [p.exists() for p in placed] == [False, True, False, False]


async def test_path_delete_removes_every_image_of_the_camera(client, cam1, raw_frames, data_dir):
    other = place(raw_frames[:3], data_dir, camera=6)
    status, out = await post(client, "/file/pathDelete", {"camera": 1})
    assert status == 200 and out == {"deleted": True, "count": N}
    _, out = await post(client, "/file/pathFileCount", {"camera": 1})
    assert out == {"count": 0}
    assert all(p.exists() for p in other)
    _, out = await post(client, "/file/pathSize", {"camera": 1})
    assert out == {"size": "0 B", "bytes": 0}


# -- share ---------------------------------------------------------------------------

async def test_shared_directory_is_a_page_and_files_download_with_range(client, cam1, data_dir):
    _, out = await post(client, "/convert/createVideo", {**FULL, "fps": 25, "save": True, "skip": 9})
    await finished(client, out["id"])
    captures = data_dir / "shared" / "captures"
    (captures / "<b>odd & name.txt").write_text("hello")
    resp = await client.get("/shared/captures/")
    page = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    name = out["url"].rsplit("/", 1)[1]
    assert name in page and "?play" in page
    assert "&lt;b&gt;odd &amp; name.txt" in page and "<b>odd" not in page
    resp = await client.get("/shared/captures", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/shared/captures/"
    resp = await client.get(f"/shared/captures/{name}?play")
    assert "<video" in await resp.text()
    size = (captures / name).stat().st_size
    resp = await client.get(f"/shared/captures/{name}", headers={"Range": "bytes=10-"})
    assert resp.status == 206 and len(await resp.read()) == size - 10


async def raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """A request line sent byte for byte: no client-side normalising of the path."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head = data.split(b"\r\n", 1)[0]
    return int(head.split()[1]), data


TRAVERSALS = [
    b"/shared/../camera/secret.txt",
    b"/shared/captures/../../secret.txt",
    b"/shared/%2e%2e/secret.txt",
    b"/shared/captures/%2e%2e/%2e%2e/secret.txt",
    b"/shared/captures/..%2f..%2fsecret.txt",
    b"/shared/captures/%2e%2e%2f%2e%2e%2fsecret.txt",
    b"/shared/captures/..%5c..%5csecret.txt",
    b"/shared/captures/..\\..\\secret.txt",
    b"/shared//etc/passwd",
    b"/shared/%2fetc%2fpasswd",
    b"/shared/captures/%00../secret.txt",
    b"/shared/captures/x%00.mp4",
    b"/shared/captures/escape/secret.txt",
    b"/shared/captures/escape-file",
    b"/shared/captures/%252e%252e/secret.txt",
    b"/shared/./captures/../../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_shared_paths_never_escape_their_directory(client, data_dir, target):
    secret = data_dir / "secret.txt"
    secret.write_text("TOP SECRET")
    (data_dir / "camera").mkdir(exist_ok=True)
    (data_dir / "camera" / "secret.txt").write_text("TOP SECRET")
    captures = data_dir / "shared" / "captures"
    captures.mkdir(parents=True, exist_ok=True)
    (captures / "escape").symlink_to(data_dir)
    (captures / "escape-file").symlink_to(secret)
    status, raw = await raw_get(client.port, target)
    assert status in (400, 404), raw[:300]
    assert b"TOP SECRET" not in raw and b"root:" not in raw


async def test_shared_traversal_with_client_urls(client, data_dir):
    (data_dir / "secret.txt").write_text("TOP SECRET")
    (data_dir / "shared" / "captures").mkdir(parents=True, exist_ok=True)
    for raw in ("/shared/captures/%2E%2E/%2E%2E/secret.txt", "/shared/captures/..%2F..%2Fsecret.txt"):
        resp = await client.get(URL(raw, encoded=True))
        assert resp.status in (400, 404) and "TOP SECRET" not in await resp.text()


async def test_images_another_program_drops_in_are_used(client, raw_frames, data_dir):
    # camera 8 is not configured; its folder in the tree makes it known
    place(raw_frames[:20], data_dir, camera=8, base=datetime(2024, 5, 5, 5, 5, 5))
    _, out = await post(client, "/convert/createZip", {"camera": 8, "start": "2024-05-05", "end": "2024-05-06",
                                                       "save": True})
    await finished(client, out["id"])
    with zipfile.ZipFile(data_dir / out["url"].lstrip("/")) as zf:
        assert len(zf.infolist()) == 20


async def test_status_of_a_finished_failed_job_reports_the_error(client, raw_frames, data_dir):
    placed = place(raw_frames[:5], data_dir, camera=7, base=datetime(2024, 7, 7, 7, 7, 7))
    for p in placed:
        p.write_bytes(b"not a jpeg")
    _, out = await post(client, "/convert/createVideo", {"camera": 7, "start": "20240707-000000",
                                                         "end": "20240707-235959", "fps": 5})
    st = await finished(client, out["id"])
    assert st["status"] == "failed" and st["running"] is False and st["error_message"]
    assert not (data_dir / out["url"].lstrip("/")).exists()
