"""Motion capture: a supervised ffmpeg per camera saves JPEGs when the picture changes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from storaged.app import create_app
from storaged.camera import images
from storaged.camera.motion import JpegSplitter, ffmpeg_argv, parse_cameras
from storaged.config import ConfigError
from storaged.supervise.ffmpeg import redact
from tests.helpers import ffmpeg, json_of, wait_until

# A grey still scene; a red box moves from x=10 to x=130 between t=3 s and t=5 s, then stays.
STILL_BEFORE, STILL_AFTER, MOVE_FROM, MOVE_TO = 8, 8, 3.0, 5.0
BOX_FROM, BOX_TO, WIDTH, HEIGHT = 10, 130, 160, 120
SCENE = (f"color=c=gray:s={WIDTH}x{HEIGHT}:r=25:d={STILL_BEFORE}[bg];color=c=red:s=16x16:r=25:d={STILL_BEFORE}[box];"
         f"[bg][box]overlay=x='if(lt(t,{MOVE_FROM}),{BOX_FROM},if(lt(t,{MOVE_TO}),"
         f"{BOX_FROM}+(t-{MOVE_FROM})*60,{BOX_TO}))':y=50")


def red_box_x(jpegs: list[Path]) -> list[int]:
    """Where the red box's left edge is in each image (decoded by ffmpeg; -1 when there is no box)."""
    raw = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "image2pipe", "-c:v", "mjpeg",
                          "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                         input=b"".join(p.read_bytes() for p in jpegs), capture_output=True, check=True,
                         timeout=120).stdout
    frame = WIDTH * HEIGHT * 3
    assert len(raw) == frame * len(jpegs)
    out = []
    for n in range(len(jpegs)):
        row = raw[n * frame + 58 * WIDTH * 3:n * frame + 59 * WIDTH * 3]  # a row through the box (y 50..65)
        red = [x for x in range(WIDTH) if row[3 * x] > 150 and row[3 * x + 1] < 100 and row[3 * x + 2] < 100]
        out.append(red[0] if red else -1)
    return out


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish(port: int) -> subprocess.Popen:
    """The scene in real time as MPEG-TS over loopback UDP, like a camera."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", SCENE,
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "5", "-pix_fmt", "yuv420p",
         "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def udp_bound(port: int) -> bool:
    """Whether something listens on the UDP port (the camera ffmpeg has opened its input)."""
    with open("/proc/net/udp") as fh:
        return any(line.split()[1].endswith(f":{port:04X}") for line in fh.readlines()[1:])


def saved(data_dir: Path, camera: int) -> list[datetime]:
    root = data_dir / "camera" / str(camera)
    return sorted(images.time_of_name(p.name) for p in root.glob("*/*.jpg"))


async def status_of(client, camera: int) -> dict:
    resp = await client.get("/motion/status")
    assert resp.status == 200
    return next(c for c in (await json_of(resp))["cameras"] if c["camera"] == camera)


async def test_images_are_saved_during_motion_and_not_while_still(make_client, data_dir):
    port = free_udp_port()
    client = await make_client(cameras=f"1=udp://127.0.0.1:{port}|fps=5|threshold=0.05")
    await wait_until(lambda: _async(udp_bound(port)), timeout=60, what="the camera ffmpeg listening")
    source = publish(port)
    try:
        assert await asyncio.to_thread(source.wait, 60) == 0
    finally:
        if source.poll() is None:
            source.kill()
            source.wait()
    # Saving trails the source by the probing and encoding latency: wait for it to settle.
    async def settled():
        st = await status_of(client, 1)
        return st["imagesSaved"] >= 4 and st["lastImage"] is not None and \
            (datetime.now(timezone.utc).replace(tzinfo=None) - saved(data_dir, 1)[-1]).total_seconds() > 2
    await wait_until(settled, timeout=60, what="motion images")
    # Told apart by what they show, not by when they came: on a loaded machine the source and the
    # capture run late by seconds.  2 s of motion at 5 fps: about 10 images of the box on its way; at
    # rest at most the run's baseline (box at the start) and the first still picture after (at the end).
    jpegs = sorted((data_dir / "camera" / "1").glob("*/*.jpg"), key=lambda p: p.name)
    xs = red_box_x(jpegs)
    names = [p.name for p in jpegs]
    moving = [x for x in xs if BOX_FROM + 4 <= x <= BOX_TO - 4]
    assert 4 <= len(moving) <= 12, list(zip(names, xs))
    assert len(xs) - len(moving) <= 2, list(zip(names, xs))
    assert all(a <= b for a, b in zip(xs, xs[1:])), xs  # in the order the box moved
    st = await status_of(client, 1)
    assert st["running"] is True and st["imagesSaved"] == len(xs) and st["restarts"] == 0
    assert st["source"] == f"udp://127.0.0.1:{port}" and st["lastError"] is None
    # Every image after the baseline is a change: the last one saved is the last motion seen.
    last_motion = datetime.fromisoformat(st["lastMotion"]).replace(tzinfo=None)
    assert last_motion == saved(data_dir, 1)[-1]
    # names follow the scheme, day folders by capture date, and nothing torn or temporary is left
    for p in (data_dir / "camera" / "1").glob("*/*"):
        assert images.IMAGE_RE.match(p.name) and p.parent.name == p.name[:8], p
        assert p.read_bytes()[:2] == b"\xff\xd8" and p.read_bytes()[-2:] == b"\xff\xd9"
    pid = st["pid"]
    await client.close()  # app shutdown stops the camera's ffmpeg (q, TERM, KILL)
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def _async(value):
    return value


async def test_failed_ffmpeg_is_restarted_with_backoff(make_client, tmp_path):
    missing = tmp_path / "no-such-camera.ts"
    client = await make_client(cameras='{"2": {"url": "%s", "re": true}}' % missing, camera_backoff_max=1.0)

    async def restarted():
        st = await status_of(client, 2)
        return st if st["restarts"] >= 2 else None
    st = await wait_until(restarted, timeout=60, what="two restarts")
    assert "No such file" in st["lastError"] and st["imagesSaved"] == 0
    assert st["source"] == str(missing)


async def test_a_file_source_is_captured_and_restarted_when_it_ends(make_client, tmp_path, data_dir):
    src = tmp_path / "scene.ts"
    ffmpeg("-f", "lavfi", "-i", SCENE, "-c:v", "libx264", "-preset", "ultrafast", "-g", "5",
           "-pix_fmt", "yuv420p", str(src))
    client = await make_client(cameras=f"3={src}|fps=5", camera_backoff_max=1.0)

    async def ended_once():
        st = await status_of(client, 3)
        return st if st["restarts"] >= 1 else None
    st = await wait_until(ended_once, timeout=60, what="the file to end")
    assert "status 0" in st["lastError"]
    # read as fast as possible the names are wall-clock times, but the count is the scene's:
    # a baseline plus the sampled motion
    assert 4 <= len(saved(data_dir, 3)) <= 14


def test_jpeg_splitter_cuts_a_stream_of_jpegs_into_whole_images(tmp_path):
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-frames:v", "20", "-q:v", "2",
           str(tmp_path / "%02d.jpg"))
    singles = [p.read_bytes() for p in sorted(tmp_path.glob("*.jpg"))]
    stream = b"garbage" + b"".join(singles)
    for chunk in (1, 777, 4096, len(stream)):
        splitter = JpegSplitter()
        out = []
        for i in range(0, len(stream), chunk):
            out += splitter.feed(stream[i:i + chunk])
        assert out == singles, chunk


def test_cameras_setting_formats():
    specs = parse_cameras("1=rtsp://u:pw@cam/live|threshold=0.1|fps=2; 2=udp://0.0.0.0:5000|detect=scene",
                          0.05, 5.0)
    assert sorted(specs) == [1, 2]
    assert (specs[1].threshold, specs[1].fps, specs[1].detect) == (0.1, 2.0, "blocks")
    assert (specs[2].threshold, specs[2].fps, specs[2].detect) == (0.05, 5.0, "scene")
    assert redact(specs[1].url) == "rtsp://u:***@cam/live"
    js = parse_cameras('{"7": "rtsp://cam7/s", "8": {"url": "x.ts", "re": true, "enabled": false}}', 0.05, 5.0)
    assert js[7].url == "rtsp://cam7/s" and js[8].realtime and not js[8].enabled
    assert parse_cameras("", 0.05, 5.0) == {}
    argv = ffmpeg_argv(specs[2])
    vf = argv[argv.index("-vf") + 1]
    assert "gt(scene,0.05)" in vf and argv[-3:] == ["-f", "image2pipe", "pipe:1"]
    argv = ffmpeg_argv(specs[1])
    assert "-rtsp_transport" in argv and "mpdecimate=hi=1632" in argv[argv.index("-vf") + 1]


@pytest.mark.parametrize("raw", ["1", "x=rtsp://a", "0=rtsp://a", "1=", "1=a|fps=0", "1=a|threshold=2",
                                 "1=a|detect=magic", "1=a|bogus=1", "1=a;1=b", "[1]", "{bad json"])
def test_bad_cameras_setting_is_a_config_error(config, raw):
    with pytest.raises(ConfigError):
        create_app(config.replace(cameras=raw))


def test_bad_timezone_is_a_config_error(config):
    with pytest.raises(ConfigError):
        create_app(config.replace(timezone="Mars/Olympus"))


async def test_status_lists_configured_cameras_and_disabled_ones_do_not_run(make_client, tmp_path):
    client = await make_client(cameras=f"4={tmp_path / 'x.ts'}|enabled=false")
    st = await status_of(client, 4)
    assert st["enabled"] is False and st["running"] is False and st["restarts"] == 0
