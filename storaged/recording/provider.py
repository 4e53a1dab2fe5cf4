"""The recording family's answers: segments (ring-buffer data), clip jobs, restarts.

Layout (see storaged.recording.index and .supervisor)::

    <data>/streams/<id>/segments/r<run>/<segment>.ts   recorded segments
    <data>/streams/<id>/segments/r<run>.csv             each run's segment list
    <data>/streams/<id>/clips/<clip_id>/                clip jobs (their mp4s are objects)
    <data>/streams/<id>/inrun.pid                       the live segmenter ({run} + identity)
    <data>/streams/<id>/state.json                      runs, restarts

*Never listed for deletion.*  Segments written in the last
``max(60 s, 3 x stream_segment_time + stream_stall_timeout)`` (the live one
is being written), and every segment of a stream with a clip being cut
(``clips/<id>/config.json`` without ``results.json``, younger than an hour).

*Deleting.*  A segment is unlinked; its run directory is removed once empty
and not the live run, and then the run's list goes too, so the index
forgets the run.

*References.*  A finished clip job keeps the objects it stored (its
``results.json`` lists them) until the clip job itself expires.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from storaged.config import Config
from storaged.jobs.state import CONFIG, PIDFILE, RESULTS
from storaged.supervise.process import read_pidfile
from storaged.provider import (KEPT, RESTARTS_HELP, RING, FsckContext, Item, Kind, Provider, Sample, Scan,
                               delete_finished_job, job_item, record_files)
from storaged.recording import index as idx
from storaged.store.atomic import read_json_or, unlink_quiet
from storaged.store.layout import Layout
from storaged.store.tree import files, rmdir_quiet, subdirs

CLIP_GRACE = 3600.0
STATE = "state.json"


class RecordingProvider(Provider):
    name = "recording"
    top_dirs = ("streams",)

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.config = config
        self.root = layout.root / "streams"
        self.service: Any = None  # the StreamService, when the daemon runs (for live figures)
        self.kinds = (
            Kind("recordings", "retention_recordings", 0, self.segment_items, self.delete_segment, RING,
                 "recorded stream segments"),
            Kind("clips", "retention_exports", 1, self.clip_items, delete_finished_job, KEPT,
                 "stream clip jobs (their mp4s are uploads)"),
        )

    def streams(self) -> Iterator[tuple[int, Path]]:
        for sd in subdirs(self.root):
            if sd.name.isdigit():
                yield int(sd.name), sd

    def replicable(self, root: Path) -> Iterator[str]:
        """Stream records and states, and completed segments with their runs' lists (a segment is
        complete once its run's list names it: it was verified and renamed into place)."""
        yield from record_files(root, "streams")
        for sid, sd in self.streams():
            if (sd / "state.json").exists():
                yield f"streams/{sid}/state.json"
            seg_dir = sd / "segments"
            for run in idx.StreamIndex(seg_dir).runs():
                yield f"streams/{sid}/segments/{idx.list_name(run)}"
                try:
                    listed = idx.read_list(seg_dir / idx.list_name(run))
                except OSError:
                    continue
                for name, _a, _b in listed:
                    if (seg_dir / idx.run_dir_name(run) / name).is_file():
                        yield f"streams/{sid}/segments/{idx.run_dir_name(run)}/{name}"

    def job_roots(self) -> Iterable[Path]:
        for _sid, sd in self.streams():
            yield sd / "clips"

    # -- segments ------------------------------------------------------------------
    def segment_grace(self) -> float:
        return max(60.0, 3 * self.config.stream_segment_time + self.config.stream_stall_timeout)

    def _cutting(self, scan: Scan) -> set[int]:
        """Streams with a clip being cut right now: all their segments stay."""
        out: set[int] = set()
        for sid, sd in self.streams():
            for cd in subdirs(sd / "clips"):
                try:
                    fresh = scan.now - os.stat(cd / CONFIG).st_mtime < CLIP_GRACE
                except FileNotFoundError:
                    continue
                if fresh and not (cd / RESULTS).exists():
                    out.add(sid)
        return out

    def segment_items(self, scan: Scan) -> Iterator[Item]:
        grace = self.segment_grace()
        cutting = set() if scan.usage else self._cutting(scan)
        for sid, sd in self.streams():
            if sid in cutting:
                continue
            for rd in subdirs(sd / "segments"):
                m = idx.RUN_DIR_RE.match(rd.name)
                if m is None:
                    continue
                for e in files(rd):
                    if not idx.NAME_RE.match(e.name):
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not scan.usage and scan.now - st.st_mtime < grace:
                        continue
                    yield Item("recordings", Path(e.path), scan.rel(Path(e.path)), st.st_mtime, st.st_size,
                               extra={"stream": sid, "run": int(m.group(1))})

    def delete_segment(self, scan: Scan, item: Item) -> bool:
        unlink_quiet(item.path)
        run_dir = item.path.parent
        stream_dir = run_dir.parent.parent
        live = read_json_or(stream_dir / PIDFILE, None)
        identity = read_pidfile(stream_dir / PIDFILE)
        live_run = live.get("run") if isinstance(live, dict) and identity is not None and identity.alive() else None
        if live_run != item.extra.get("run") and rmdir_quiet(run_dir):
            # The whole run is gone: its list goes too, so the index forgets the run.
            unlink_quiet(run_dir.parent / idx.list_name(item.extra["run"]))
        return True

    # -- clips ---------------------------------------------------------------------
    def clip_items(self, scan: Scan) -> Iterator[Item]:
        for sid, sd in self.streams():
            for cd in subdirs(sd / "clips"):
                item = job_item("clips", scan, cd, {"stream": sid})
                if item is not None:
                    yield item

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        for sid, sd in self.streams():
            for cd in subdirs(sd / "clips"):
                results = read_json_or(cd / RESULTS, None)
                clips = results.get("clips") if isinstance(results, dict) else None
                for clip in clips if isinstance(clips, list) else ():
                    if isinstance(clip, dict) and isinstance(clip.get("file_id"), str):
                        yield clip["file_id"], f"streams/{sid}/clips/{cd.name}"

    # -- fsck and metrics ------------------------------------------------------------
    def fsck(self, check: FsckContext) -> None:
        self.check_segments(check)

    def check_segments(self, check: FsckContext) -> None:
        """Every run's segments against its list (storaged.recording.index.check_run has the rules).

        Repairs: a bad or unlisted segment moves to lost+found (and a bad one is
        noted as a known hole, so the index no longer lists it); a missing one is
        noted as a hole; a run's unfinished temp segments are finished or removed
        as the daemon does at start-up (only when no segmenter runs that run).
        """
        for _sid, sd in self.streams():
            seg_dir = sd / "segments"
            identity = read_pidfile(sd / PIDFILE)
            pid_data = read_json_or(sd / PIDFILE, None)
            live_run = pid_data.get("run") if identity is not None and identity.alive() \
                and isinstance(pid_data, dict) else None
            for run in idx.StreamIndex(seg_dir).runs():
                check.count("recorded segments", len(idx.read_list(seg_dir / idx.list_name(run))))
                finish: list[bool] = []
                for path, kind, detail in idx.check_run(seg_dir, run, run == live_run, check.deep):
                    check.problem(f"{kind} segment", path, detail,
                                  self._segment_repair(check, seg_dir, run, path, kind, detail, finish))
                if finish:
                    idx.finalize_run(seg_dir, run, live=False)

    @staticmethod
    def _segment_repair(check: FsckContext, seg_dir: Path, run: int, path: Path, kind: str, detail: str,
                        finish: list[bool]):
        if kind in ("bad", "unlisted"):
            def move() -> str:
                done = check.to_lost_found(path)
                if kind == "bad":
                    idx.note_absent(seg_dir, run, [f"{path.name}: {detail} (moved by fsck)"])
                return done
            return move
        if kind == "unfinished":
            def later() -> str:
                finish.append(True)
                return "finished or removed, as the daemon does at start-up"
            return later
        if kind == "missing":
            def note() -> str:
                idx.note_absent(seg_dir, run, [f"{path.name}: lost (noted by fsck)"])
                return "noted as a known hole (clips report it as missing)"
            return note
        return None

    def usage(self, scan: Scan) -> Iterable[Sample]:
        restarts = 0
        for _sid, sd in self.streams():
            state = read_json_or(sd / STATE, None)
            if isinstance(state, dict) and isinstance(state.get("restarts"), int):
                restarts += state["restarts"]
        yield Sample("storaged_ffmpeg_restarts", RESTARTS_HELP, restarts, (("family", "streams"),), "counter")

    def live(self) -> Iterable[Sample]:
        active = self.service.active_recordings() if self.service is not None else 0
        yield Sample("storaged_recordings_active", "Streams whose segmenter is running.", active)
