"""The keyframe cache beside a stored session video: right for the object it names, never trusted when damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from storaged.jobs.context import JobContext
from storaged.sessions import keyframes
from storaged.sessions import split
from storaged.store.layout import Layout
from storaged.store.objects import KEYFRAMES, ObjectStore
from tests.helpers import ffmpeg

SECONDS = 30
# Keyframes every 37 frames (1.48 s at 25 fps) and B-frames, so that keyframes fall between whole
# seconds and a keyframe's decode time differs from its presentation time.
STARTS = [0.5, 3.0, 7.77, 12.0, 15.2, 21.9, 26.0]


@pytest.fixture(scope="session")
def bframes_video(media_dir: Path) -> Path:
    path = media_dir / "bframes.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={SECONDS}",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
           "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "37", "-keyint_min", "37",
           "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
           "-movflags", "+faststart", str(path))
    return path


@pytest.fixture
def stored(data_dir: Path, bframes_video: Path) -> tuple[Layout, str, Path]:
    layout = Layout(data_dir)
    layout.ensure()
    copy = data_dir / "tmp" / "incoming.mp4"
    shutil.copy(bframes_video, copy)
    meta = ObjectStore(layout, max_size=1 << 30).put_file_blocking(copy, "session.mp4")
    return layout, meta["file_id"], layout.object_dir(meta["file_id"]) / meta["stored_name"]


def run_split(layout: Layout, oid: str, path: Path, starts: list[float], name: str, *,
              length: float = 2.0, accurate: bool = False) -> dict:
    job_dir = layout.root / "sessions" / "1.split" / name
    job_dir.mkdir(parents=True)
    races = [{"race_id": i + 1, "start_time": s, "duration": length} for i, s in enumerate(starts)]
    ctx = JobContext(job_dir, layout.root, {"args": {"session_id": 1, "source": f"file:{path}", "races": races,
                                                     "accurate": accurate, "file_id": oid}})
    return split.split_races(ctx)


def clip_starts(result: dict) -> list[float]:
    assert result["failed"] == 0, result
    return [race["clip_start"] for race in result["races"]]


def no_ffprobe(monkeypatch) -> None:
    """From here on, running ffprobe fails the test (a split that needs it cannot finish)."""
    monkeypatch.setattr(split.ff, "FFPROBE", "/nonexistent/ffprobe-must-not-run")


def test_a_second_split_of_the_same_video_runs_no_ffprobe_and_cuts_the_same(stored, monkeypatch):
    layout, oid, path = stored
    first = run_split(layout, oid, path, STARTS, "first")
    cache = json.loads((layout.object_dir(oid) / KEYFRAMES).read_text())
    assert cache["file_id"] == oid and cache["size"] == path.stat().st_size and cache["indexed"] is True
    assert abs(cache["duration"] - SECONDS) < 0.2

    no_ffprobe(monkeypatch)
    again = run_split(layout, oid, path, STARTS, "again", length=2.5)
    assert clip_starts(again) == clip_starts(first)
    assert all(r["file_id"] != f["file_id"] for r, f in zip(again["races"], first["races"]))
    # An accurate split needs only the duration, which the cache holds too.
    assert run_split(layout, oid, path, [4.0], "accurate", accurate=True)["split"] == 1
    # Without its file_id the job cannot know the cache: it asks ffprobe, which is not there.
    job_dir = layout.root / "sessions" / "1.split" / "no-id"
    job_dir.mkdir(parents=True)
    ctx = JobContext(job_dir, layout.root, {"args": {"session_id": 1, "source": f"file:{path}",
                                                     "races": [{"race_id": 1, "start_time": 3.0, "duration": 1}]}})
    with pytest.raises(FileNotFoundError):
        split.split_races(ctx)


def test_every_cached_answer_is_what_ffprobe_answers(stored, monkeypatch):
    """Spans generalise each answer to the starts between its keyframe and the start asked; each of
    those answers must equal a fresh seeking probe's, for starts all over the video."""
    layout, oid, path = stored
    run_split(layout, oid, path, STARTS, "learn")
    cache = keyframes.load(layout, oid, path.stat().st_size)
    assert cache is not None
    grid = [round(0.07 * i, 6) for i in range(int(SECONDS / 0.07))]
    known = [s for s in grid if cache.knows(s)]
    assert len(known) > 3 * len(STARTS)  # the spans answer far more starts than were asked
    _, fresh = split.probe_source(f"file:{path}", known)
    assert fresh is not None
    mismatches = [(s, cache.keyframe(s), f) for s, f in zip(known, fresh) if cache.keyframe(s) != f]
    assert not mismatches
    assert any(f is not None and f["dts"] < f["pts"] for f in fresh)  # B-frames: decode time before pts
    # A start no span covers is asked of ffprobe (and learnt): only the starts it did not know.
    unknown = next(s for s in grid if not cache.knows(s) and s > 1)
    probed: list[list[float]] = []
    real = split.probe_source

    def counting(source, starts, *args, **kwargs):
        probed.append(list(starts))
        return real(source, starts, *args, **kwargs)

    monkeypatch.setattr(split, "probe_source", counting)
    run_split(layout, oid, path, [STARTS[1], unknown], "one-more")
    assert probed == [[unknown]]
    assert keyframes.load(layout, oid, path.stat().st_size).knows(unknown)


def _valid_cache(layout: Layout, oid: str) -> dict:
    return json.loads((layout.object_dir(oid) / KEYFRAMES).read_text())


@pytest.mark.parametrize("damage", ["torn", "empty", "not-a-dict", "other-object", "other-size", "bad-span",
                                    "overlapping-spans", "bad-exact", "negative-duration"])
def test_a_damaged_or_foreign_cache_is_ignored_and_replaced(stored, damage):
    layout, oid, path = stored
    reference = clip_starts(run_split(layout, oid, path, STARTS, "reference"))
    good = _valid_cache(layout, oid)
    target = layout.object_dir(oid) / KEYFRAMES
    # Damage that would change the cuts if it were believed: every span's keyframe moved.
    doc = json.loads(json.dumps(good))
    if damage == "torn":
        target.write_bytes(json.dumps(good).encode()[:40])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "not-a-dict":
        target.write_text("[1, 2, 3]")
    else:
        doc["spans"] = [[max(0.0, pts - 0.5), max(0.0, dts - 0.5), upto] for pts, dts, upto in doc["spans"]]
        doc["exact"] = {}
        if damage == "other-object":
            doc["file_id"] = "0" * 64
        elif damage == "other-size":
            doc["size"] += 1
        elif damage == "bad-span":
            doc["spans"][0] = [1.0, "x", 2.0]
        elif damage == "overlapping-spans":
            doc["spans"].append([doc["spans"][-1][0], doc["spans"][-1][1], SECONDS + 5])
            doc["spans"].append([doc["spans"][-2][0] + 0.01, doc["spans"][-2][1], SECONDS + 6])
        elif damage == "bad-exact":
            doc["exact"] = {"3.000000": [1.0]}
        elif damage == "negative-duration":
            doc["duration"] = -1
        target.write_text(json.dumps(doc))
    assert keyframes.load(layout, oid, path.stat().st_size) is None
    assert clip_starts(run_split(layout, oid, path, STARTS, "after", length=2.5)) == reference
    # The split replaced the bad file by what it learnt.
    rewritten = keyframes.load(layout, oid, path.stat().st_size)
    assert rewritten is not None and rewritten.file_id == oid
    assert all(rewritten.knows(s) for s in STARTS)


def test_a_cache_copied_beside_another_object_is_not_used_there(stored, data_dir, media_dir):
    layout, oid, path = stored
    run_split(layout, oid, path, STARTS, "learn")
    other_src = data_dir / "tmp" / "other.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=12", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(other_src))
    meta = ObjectStore(layout, max_size=1 << 30).put_file_blocking(other_src, "other.mp4")
    other_dir = layout.object_dir(meta["file_id"])
    shutil.copy(layout.object_dir(oid) / KEYFRAMES, other_dir / KEYFRAMES)
    result = run_split(layout, meta["file_id"], other_dir / meta["stored_name"], [3.3, 20.0], "other")
    # Its own duration (12 s), not the copied cache's (30 s): the race at 20 s is past its end.
    assert abs(result["video_duration"] - 12) < 0.2
    assert result["split"] == 1 and "after the end" in result["races"][1]["error"]
    assert result["races"][0]["clip_start"] == 3.0
    assert _valid_cache(layout, meta["file_id"])["file_id"] == meta["file_id"]


def test_healing_the_bytes_drops_the_cache_learnt_from_them(stored, bframes_video):
    layout, oid, path = stored
    run_split(layout, oid, path, STARTS, "learn")
    assert (layout.object_dir(oid) / KEYFRAMES).exists()
    with open(path, "r+b") as fh:  # bit rot in the stored copy
        fh.seek(1000)
        fh.write(b"\xff" * 16)
    copy = layout.tmp / "again.mp4"
    shutil.copy(bframes_video, copy)
    meta = ObjectStore(layout, max_size=1 << 30).put_file_blocking(copy, "session.mp4")
    assert meta["file_id"] == oid and "repaired" in meta
    assert not (layout.object_dir(oid) / KEYFRAMES).exists()
