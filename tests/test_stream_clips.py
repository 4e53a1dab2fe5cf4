"""Stream clips start where they say: copy mode on the keyframe at or before start, accurate mode on start.

The live source's every frame shows its own number N (luma = 8·N mod 256,
blue chroma = 16·⌊N/32⌋ mod 256, lossless), with a keyframe every 25 frames
(N = 0, 25, 50, …) at 25 fps, so decoding a clip's first frame tells which
frame it is.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from storaged.jobs.queue import entries as queue_entries
from storaged.jobs.state import CONFIG, INTERRUPTED, PIDFILE, RESULTS, read_state
from storaged.recording.clips import KIND
from storaged.store.layout import Layout
from storaged.supervise.process import write_pidfile
from tests.test_streams import FAST, call, clip_done, create, no_leftover_ffmpeg, segments_at_least  # noqa: F401
from tests.helpers import dead_process, queue_entry, wait_until
from tests.live_source import free_udp_port

FPS = 25
CYCLE = 512  # frames before the number repeats


class NumberedSource:
    def __init__(self) -> None:
        self.port = free_udp_port()
        self.url = f"udp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
             f"color=c=black:size=64x64:rate={FPS},format=yuv420p,"
             "geq=lum='mod(N*8,256)':cb='mod(floor(N/32)*16,256)':cr=128",
             "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p",
             "-g", str(FPS), "-keyint_min", str(FPS), "-sc_threshold", "0",
             "-f", "mpegts", f"{self.url}?pkt_size=1316"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def first_frame_number(path: Path) -> int:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True, timeout=60).stdout
    y = sum(raw[:64 * 64]) / (64 * 64)
    u = sum(raw[64 * 64:64 * 64 + 32 * 32]) / (32 * 32)
    return (round(y / 8) % 32 + 32 * round(u / 16)) % CYCLE


async def recorded(make_client, sources: list, segments: int) -> tuple:
    """A daemon (client), a stream of a NumberedSource that recorded ``segments`` segments and stopped, its status."""
    client = await make_client(**FAST)
    src = NumberedSource()
    sources.append(src)
    sid = await create(client, src.url)
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    st = await segments_at_least(client, sid, segments)
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200
    return client, sid, st


async def fetch(link: str, path: Path) -> Path:
    async with aiohttp.ClientSession() as http:
        async with http.get(link) as resp:
            assert resp.status == 200
            path.write_bytes(await resp.read())
    return path


async def test_clips_start_on_the_keyframe_at_or_before_start_and_accurate_ones_on_start(
        make_client, no_leftover_ffmpeg, tmp_path):
    client, sid, st = await recorded(make_client, no_leftover_ffmpeg, 8)
    t0 = st["first_segment_start"] + 3.0

    copies = []
    for k in range(8):  # starts spread over several GOPs and segment boundaries
        start = round(t0 + k * 1.37, 3)
        out = await clip_done(client, sid, start, start + 2.0)
        (clip,) = out["clips"]
        (covered,) = out["covered"]
        assert covered == {"start": clip["start"], "stop": clip["stop"]}
        # copy mode: the clip holds from a keyframe at or before start, at most one GOP earlier
        assert covered["start"] <= start + 0.001 and start - covered["start"] < 1.0 + 0.05, (start, covered)
        assert covered["stop"] == pytest.approx(start + 2.0, abs=0.1)
        n = first_frame_number(await fetch(clip["link"], tmp_path / f"copy{k}.mp4"))
        assert n % FPS == 0, f"clip at {start} starts on frame {n}, not a keyframe"
        copies.append((covered["start"], n))
    # covered tells the first frame's time: frame numbers differ as the covered starts do
    (c0, n0) = copies[0]
    for c, n in copies[1:]:
        assert (n - n0) % CYCLE == round((c - c0) * FPS) % CYCLE, (copies, c, n)

    # accurate mode: the first frame is the one shown at start
    for k in range(3):
        start = round(t0 + 0.52 + k * 2.29, 3)
        status, _ = await call(client, "GET", f"/streams/{sid}/get_clip",
                               params={"start": str(start), "stop": str(start + 2), "mode": "sideways"})
        assert status == 400
        out = await clip_done(client, sid, start, start + 2.0, mode="accurate")
        (covered,) = out["covered"]
        assert covered["start"] == pytest.approx(start, abs=0.001)
        n = first_frame_number(await fetch(out["clips"][0]["link"], tmp_path / f"acc{k}.mp4"))
        expected = (n0 + (start - c0) * FPS) % CYCLE
        # the frame shown at start began at most one frame before it; a start that falls on a frame
        # boundary (to within the index's millisecond and MPEG-TS's 90 kHz rounding) may get either frame
        off = (n - expected) % CYCLE
        assert min(off, CYCLE - off) <= 1 + 1e-3, (n, expected)


async def test_a_failed_cut_answers_500_with_error_message(make_client, no_leftover_ffmpeg, tmp_path, data_dir):
    client, sid, st = await recorded(make_client, no_leftover_ffmpeg, 3)
    for seg in (data_dir / "streams" / str(sid) / "segments" / "r000001").iterdir():
        seg.write_bytes(b"\x47" + b"\0" * 187)  # damaged behind the daemon's back: ffmpeg cannot cut
    start = st["first_segment_start"] + 0.5
    status, out = await call(client, "GET", f"/streams/{sid}/get_clip",
                             params={"start": str(start), "stop": str(start + 1)})

    async def ended():
        status, out = await call(client, "GET", f"/streams/{sid}/get_clip",
                                 params={"start": str(start), "stop": str(start + 1)})
        if status == 200:  # still processing after stream_clip_wait
            assert out["status"] in ("processing", "pending"), out
            return None
        return status, out
    status, out = await wait_until(ended, timeout=60, what="the cut to fail")
    assert status == 500, out
    assert out["error_message"].startswith("Cannot cut clip") and "status" not in out


async def test_a_clip_is_a_job_of_the_engine_and_one_a_killed_daemon_left_is_cut_again(
        make_client, no_leftover_ffmpeg, data_dir):
    client, sid, st = await recorded(make_client, no_leftover_ffmpeg, 3)
    start = st["first_segment_start"] + 0.5
    out = await clip_done(client, sid, start, start + 1.0)
    job = data_dir / "streams" / str(sid) / "clips" / out["clip_id"]
    # The job engine's files: what was asked, the results, no worker named, no queue entry left.
    config = json.loads((job / CONFIG).read_text())
    assert config["kind"] == KIND and config["args"]["start"] == start
    assert json.loads((job / RESULTS).read_text())["status"] == "done"
    assert not (job / PIDFILE).exists()
    await wait_until(lambda: asyncio.sleep(0, not any(target == job.resolve() for _, target in
                                                      queue_entries(Layout(data_dir)))),
                     what="the clip's queue entry to go")
    await client.close()

    # What a daemon killed mid-cut leaves: no results, inrun.pid naming the dead daemon, the queue entry.
    (job / RESULTS).unlink()
    write_pidfile(job / PIDFILE, dead_process())
    queue_entry(data_dir, job)
    client = await make_client(**FAST)
    state = read_state(job)
    assert state.status == "failed" and state.error == INTERRUPTED
    again = await clip_done(client, sid, start, start + 1.0)
    assert again["clip_id"] == out["clip_id"]
    assert [c["file_id"] for c in again["clips"]] == [c["file_id"] for c in out["clips"]]
    assert not (job / PIDFILE).exists()
