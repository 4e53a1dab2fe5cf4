"""Recorded segments are complete or absent: temp names, finishing, full disks, kills, 1 s segments, fsck."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storaged.supervise.process import read_pidfile
from storaged.recording import index as idx
from tests.helpers import duration_of, ffmpeg, wait_until
from tests.test_streams import FAST, call, create, live, no_leftover_ffmpeg, segments_at_least, status_of  # noqa: F401


def list_rows(seg_dir: Path, run: int) -> list[tuple[str, float, float]]:
    with open(seg_dir / idx.list_name(run)) as fh:
        return [(r[0], float(r[1]), float(r[2])) for r in csv.reader(fh) if r]


def assert_complete_or_absent(seg_dir: Path) -> int:
    """Every final name on disk is a listed, complete segment; returns how many there are.

    Safe beside a live recording: the directory is listed before the list is read (a segment is listed
    before it is renamed to its final name, and lists only grow), and final names are never removed here."""
    count = 0
    for run in idx.StreamIndex(seg_dir).runs():
        paths = list((seg_dir / idx.run_dir_name(run)).iterdir())
        rows = {idx.final_name(name): (a, b) for name, a, b in list_rows(seg_dir, run)}
        for path in paths:
            if path.name.endswith(idx.PART):
                continue
            assert path.name in rows, f"{path.name} is under a final name but not listed"
            a, b = rows[path.name]
            assert path.stat().st_size > 0, f"{path.name} is empty"
            assert idx.check_segment(path, b - a, first=a == 0) is None, path.name
            if a != 0:
                assert duration_of(path) == pytest.approx(b - a, abs=0.2), path.name
            count += 1
    return count


def fsck(data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", "fsck", "--data-dir", str(data), *extra],
                          capture_output=True, text=True, timeout=300)


def record_run(seg_dir: Path, run: int, seconds: int = 6) -> None:
    """A finished run as the segmenter writes it (temp names + list), from a generated source."""
    (seg_dir / idx.run_dir_name(run)).mkdir(parents=True)
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={seconds}", "-map", "0",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
           "-f", "segment", "-segment_format", "mpegts", "-segment_time", "1", "-reset_timestamps", "1",
           "-segment_list", str(seg_dir / idx.list_name(run)), "-segment_list_type", "csv",
           str(seg_dir / idx.run_dir_name(run) / idx.segment_pattern(run)))


# -- the finisher and fsck, on runs made by ffmpeg ------------------------------------------------------------

def test_finishing_a_run_keeps_complete_segments_and_drops_torn_and_unlisted_ones(tmp_path):
    seg_dir = tmp_path / "data" / "streams" / "1" / "segments"
    record_run(seg_dir, 1)
    run_dir = seg_dir / "r000001"
    rows = list_rows(seg_dir, 1)
    assert len(rows) == 6 and all(name.endswith(".ts.part") for name, _, _ in rows)
    assert idx.StreamIndex(seg_dir).segments() == []  # nothing is in the index before it is finished

    torn = run_dir / rows[2][0]
    torn.write_bytes(torn.read_bytes()[:12288])          # what a full disk left, still listed
    cut = run_dir / rows[3][0]
    cut.write_bytes(cut.read_bytes()[:188 * 20])          # torn on a packet boundary: only the duration tells
    (run_dir / "r000001-000006.ts.part").write_bytes(b"")  # a kill's segment: never listed
    done, rejected, retry = idx.finalize_run(seg_dir, 1, live=False)
    assert retry is False
    assert sorted(done) == sorted(idx.final_name(rows[i][0]) for i in (0, 1, 4, 5))
    assert len(rejected) == 3 and any("TS packets" in r for r in rejected) and any("holds" in r for r in rejected)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(done)
    assert assert_complete_or_absent(seg_dir) == 4

    index = idx.StreamIndex(seg_dir)
    listed = [s.name for s in index.segments()]
    assert listed == sorted(done)
    # The index is the truth: the torn segments' two seconds are a hole in the run.
    stretches = idx.groups(index.segments())
    assert len(stretches) == 2 and stretches[1][0].start - stretches[0][-1].end == pytest.approx(2.0)

    assert fsck(tmp_path / "data").returncode == 0


def test_a_rejection_the_full_disk_would_not_let_us_note_is_noted_by_the_next_pass(tmp_path, monkeypatch):
    """Out of space, the ``.absent`` note of a rejected segment can fail too; the hole must still be noted
    once a later pass can write, or fsck reports a known hole as a missing segment."""
    seg_dir = tmp_path / "data" / "streams" / "1" / "segments"
    record_run(seg_dir, 1, seconds=4)
    rows = list_rows(seg_dir, 1)
    torn = seg_dir / "r000001" / rows[1][0]
    torn.write_bytes(torn.read_bytes()[:12288])
    real_note = idx.note_absent

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idx, "note_absent", disk_full)
    _, rejected, _ = idx.finalize_run(seg_dir, 1, live=True)
    assert len(rejected) == 1
    assert not (seg_dir / idx.absent_name(1)).exists()
    monkeypatch.setattr(idx, "note_absent", real_note)
    idx.finalize_run(seg_dir, 1, live=False)  # the run ends with space back
    assert idx.final_name(rows[1][0]) in idx.known_absent(seg_dir, 1)
    assert fsck(tmp_path / "data").returncode == 0


def test_fsck_checks_segments_against_the_list_and_repair_sets_damage_aside(tmp_path):
    data = tmp_path / "data"
    seg_dir = data / "streams" / "1" / "segments"
    record_run(seg_dir, 1, seconds=5)
    idx.finalize_run(seg_dir, 1, live=False)
    run_dir = seg_dir / "r000001"
    names = sorted(p.name for p in run_dir.iterdir())
    ok = fsck(data, "--deep")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5 recorded segments" in ok.stdout

    (run_dir / names[1]).write_bytes(b"")                                    # emptied behind the daemon's back
    data_3 = (run_dir / names[3]).read_bytes()
    (run_dir / names[3]).write_bytes(data_3[:len(data_3) // 188 // 3 * 188])  # lost its end
    (run_dir / names[2]).unlink()                                             # gone from the middle
    (run_dir / "r000001-000099.ts").write_bytes(data_3)                       # not in the list
    (seg_dir / "r000002").mkdir()
    (seg_dir / "r000002.csv").write_text("")
    (seg_dir / "r000002" / "r000002-000000.ts.part").write_bytes(data_3)       # nobody finished it
    found = fsck(data)
    assert found.returncode == 1, found.stdout
    out = found.stdout
    assert f"bad segment streams/1/segments/r000001/{names[1]}: empty" in out
    assert f"bad segment streams/1/segments/r000001/{names[3]}: holds" in out
    assert f"missing segment streams/1/segments/r000001/{names[2]}" in out
    assert "unlisted segment streams/1/segments/r000001/r000001-000099.ts" in out
    assert "unfinished segment streams/1/segments/r000002/r000002-000000.ts.part" in out

    fixed = fsck(data, "--repair")
    assert fixed.returncode == 1, fixed.stdout  # problems found, all repaired
    assert (data / "lost+found" / "streams/1/segments/r000001" / names[3]).exists()
    assert not (seg_dir / "r000002" / "r000002-000000.ts.part").exists()  # never listed: removed
    again = fsck(data)
    assert again.returncode == 0, again.stdout
    assert assert_complete_or_absent(seg_dir) == 2


def test_older_strftime_named_runs_are_still_read(tmp_path):
    seg_dir = tmp_path / "segments"
    record_run(seg_dir, 1, seconds=4)
    run_dir = seg_dir / "r000001"
    t0 = 1_700_000_000
    lines = []
    for i, (name, a, b) in enumerate(list_rows(seg_dir, 1)):
        old = f"r000001-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t0 + int(a)))}Z.ts"
        os.rename(run_dir / name, run_dir / old)
        lines.append(f"{old},{a:.6f},{b:.6f}\n")
    (seg_dir / "r000001.csv").write_text("".join(lines))
    assert idx.finalize_run(seg_dir, 1, live=False) == ([], [], False)  # nothing to finish: names are final
    segments = idx.StreamIndex(seg_dir).segments()
    assert len(segments) == 4
    assert segments[0].start == pytest.approx(t0, abs=1.0) and segments[-1].end == pytest.approx(t0 + 4, abs=1.0)
    assert all(b.start == pytest.approx(a.end) for a, b in zip(segments, segments[1:]))


# -- a live recording under faults ----------------------------------------------------------------------------

async def test_1s_segments_never_collide_and_tile_the_timeline(make_client, live, data_dir):
    client = await make_client(**{**FAST, "stream_segment_time": 1.0})
    src = live()
    sid = await create(client, src.url)
    started = time.time()
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    await segments_at_least(client, sid, 10)
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200
    stopped = time.time()
    seg_dir = data_dir / "streams" / str(sid) / "segments"
    rows = list_rows(seg_dir, 1)
    names = [idx.final_name(n) for n, _, _ in rows]
    assert len(names) == len(set(names)) >= 10
    assert sorted(p.name for p in (seg_dir / "r000001").iterdir()) == sorted(names)
    assert assert_complete_or_absent(seg_dir) == len(names)
    segments = idx.StreamIndex(seg_dir).segments()
    assert len(segments) == len(names)
    for a, b in zip(segments, segments[1:]):
        assert b.start == pytest.approx(a.end, abs=0.01)
    # Anchored to the wall clock: the recording lies within the requests that began and ended it
    # (each segment's end is bounded by its close, which the stop waits for; the first packet comes
    # after the start, less what the live source had buffered).  Where inside them is the machine's
    # load, so no bound is taken from "now".
    assert started - 2 <= segments[0].start < segments[-1].end <= stopped + 0.01


async def test_a_killed_segmenter_leaves_no_torn_or_empty_segment_listed(make_client, live, data_dir):
    client = await make_client(**FAST)
    src = live()
    sid = await create(client, src.url)
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    before = await segments_at_least(client, sid, 2)
    seg_dir = data_dir / "streams" / str(sid) / "segments"
    identity = read_pidfile(data_dir / "streams" / str(sid) / "inrun.pid")
    assert any(p.name.endswith(idx.PART) for p in (seg_dir / "r000001").iterdir())  # the one being written
    os.kill(identity.pid, signal.SIGKILL)  # what the watchdog's last step does

    async def restarted():
        st = await status_of(client, sid)
        return st if st["restarts"] >= 1 and st["segments"] > before["segments"] else None
    st = await wait_until(restarted, timeout=60, what="recording again after the kill")
    assert not any(p.name.endswith(idx.PART) for p in (seg_dir / "r000001").iterdir())
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200
    count = assert_complete_or_absent(seg_dir)
    st = await status_of(client, sid)
    assert st["segments"] == count


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_leaves_no_truncated_segment_listed(make_client, live, small_disk):
    data = small_disk / "data"
    data.mkdir()
    client = await make_client(**{**FAST, "stream_segment_time": 1.0}, data_dir=data)
    src = live()
    sid = await create(client, src.url)
    assert (await call(client, "POST", f"/streams/{sid}/start"))[0] == 200
    await segments_at_least(client, sid, 2)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk up to the last byte
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    log = data / "streams" / str(sid) / "ffmpeg.log"

    async def out_of_space():
        return "No space left" in log.read_text(errors="replace") or None
    await wait_until(out_of_space, timeout=60, what="the segmenter meeting the full disk")
    seg_dir = data / "streams" / str(sid) / "segments"

    async def status_lists_what_is_complete():
        # The segmenter may still be finishing (or a restarted run writing into the space a rejected
        # segment gave back): each look checks every final name, and the daemon's count must meet them.
        st = await status_of(client, sid)
        return st if st["segments"] == assert_complete_or_absent(seg_dir) else None
    st = await wait_until(status_lists_what_is_complete, timeout=60,
                          what="the status to count exactly the complete segments on disk")

    filler.unlink()  # space is back: recording goes on
    await segments_at_least(client, sid, st["segments"] + 3)
    assert (await call(client, "POST", f"/streams/{sid}/stop"))[0] == 200
    count = assert_complete_or_absent(seg_dir)
    assert (await status_of(client, sid))["segments"] == count
    checked = fsck(data)
    assert "bad segment" not in checked.stdout and "unfinished segment" not in checked.stdout, checked.stdout
