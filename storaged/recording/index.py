"""The segment index: which wall-clock interval each recorded segment holds.

Protocol
--------
Every ffmpeg run *n* of a stream writes MPEG-TS segments named
``r<n:06d>/r<n:06d>-<YYYYmmddTHHMMSS>Z.ts`` (the UTC second the segment was opened,
from ``-strftime 1``) and appends one line per *finished* segment to its own
list ``r<n:06d>.csv`` (``name,start,end``: seconds of the run's timeline,
written and flushed by ffmpeg's segment muxer when the segment is closed).
The lists are ffmpeg's; the daemon only reads them, needs no lock, and
ignores a last line without its newline (a write in progress).  A list never
changes once its run has ended, so parses are cached by (size, mtime).

*Wall-clock mapping.*  A segment's name gives the second it was opened (an
upper bound of when its first frame was captured, because a frame is muxed
after it arrives); the list gives exact offsets on the run's timeline.  The
run's anchor (the wall time of its timeline's zero) is the smallest
``name + 1 - start`` over its segments, less the expected slack of that
minimum.  When a later segment's name is far later than the anchor predicts,
the source was silent while ffmpeg waited: a new anchor starts there, and the
hole shows up as a gap.

*What a crash leaves.*  A segmenter killed with SIGKILL leaves its current
segment on disk without a list line; MPEG-TS stays playable, but the segment
is not in the index (it is visible in the tree).
"""

from __future__ import annotations

import calendar
import csv
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^r(\d{6})-(\d{8}T\d{6})Z\.ts$")
LIST_RE = re.compile(r"^r(\d{6})\.csv$")
# A name this much later than the anchor predicts means the source went silent.
ANCHOR_JUMP = 2.0
# Holes up to this long between segments of one run are timing noise, not gaps.
GAP_TOLERANCE = 1.0


def segment_pattern(run: int) -> str:
    return f"r{run:06d}-%Y%m%dT%H%M%SZ.ts"


def list_name(run: int) -> str:
    return f"r{run:06d}.csv"


def run_dir_name(run: int) -> str:
    """Each run's segments live in their own directory: listing one stays cheap."""
    return f"r{run:06d}"


def name_time(name: str) -> float | None:
    m = NAME_RE.match(name)
    if not m:
        return None
    return float(calendar.timegm(time.strptime(m.group(2), "%Y%m%dT%H%M%S")))


@dataclass(frozen=True)
class Segment:
    run: int
    name: str
    start: float        # wall clock (POSIX seconds)
    end: float
    rel_start: float    # on the run's timeline, as ffmpeg listed it
    rel_end: float
    size: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


def parse_list(text: str) -> list[tuple[str, float, float]]:
    """Complete lines of a segment list; a torn last line is left for the next read."""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 3:
            continue
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError:
            continue
        if NAME_RE.match(row[0]) and end >= start:
            out.append((row[0], start, end))
    # A name listed twice means ffmpeg reopened (truncated) that file for a later segment: the earlier
    # entry's bytes are gone, so only the last entry of a name describes what is on disk.
    last = {name: i for i, (name, _, _) in enumerate(out)}
    return [entry for i, entry in enumerate(out) if last[entry[0]] == i]


def map_run(run: int, entries: list[tuple[str, float, float]], sizes: dict[str, int]) -> list[Segment]:
    """Wall-clock times for one run's list entries (see the module docstring)."""
    pieces: list[list[tuple[str, float, float, float]]] = []
    bound = None
    for name, rel_start, rel_end in entries:
        opened = name_time(name)
        if opened is None:
            continue
        ub = opened + 1.0 - rel_start
        if bound is None or ub > bound + ANCHOR_JUMP:
            pieces.append([])
            bound = ub
        bound = min(bound, ub)
        pieces[-1].append((name, rel_start, rel_end, ub))
    out = []
    for piece in pieces:
        # The minimum of n uniformly placed bounds overshoots by 1/(n+1) on average.
        anchor = min(p[3] for p in piece) - 1.0 / (len(piece) + 1)
        for name, rel_start, rel_end, _ in piece:
            out.append(Segment(run, name, anchor + rel_start, anchor + rel_end, rel_start, rel_end,
                               sizes.get(name, 0)))
    return out


class StreamIndex:
    """Cached view of one stream's segment lists.  Blocking: call from a thread."""

    def __init__(self, seg_dir: Path) -> None:
        self.dir = Path(seg_dir)
        self._cache: dict[str, tuple[tuple[int, int], list[Segment]]] = {}
        self._sizes: dict[str, int] = {}

    def runs(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := LIST_RE.match(n)))

    def run_segments(self, run: int) -> list[Segment]:
        path = self.dir / list_name(run)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        key = (st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path.name)
        if cached and cached[0] == key:
            return cached[1]
        with open(path, encoding="utf-8", errors="replace") as fh:
            entries = parse_list(fh.read())
        for name, _, _ in entries:
            if name not in self._sizes:
                try:
                    self._sizes[name] = os.stat(self.dir / run_dir_name(run) / name).st_size
                except FileNotFoundError:
                    self._sizes[name] = 0
        segments = map_run(run, entries, self._sizes)
        self._cache[path.name] = (key, segments)
        return segments

    def segments(self) -> list[Segment]:
        out: list[Segment] = []
        for run in self.runs():
            out.extend(self.run_segments(run))
        out.sort(key=lambda s: (s.start, s.run))
        return out

    def path(self, segment: Segment) -> Path:
        return self.dir / run_dir_name(segment.run) / segment.name


def groups(segments: list[Segment], tolerance: float = GAP_TOLERANCE) -> list[list[Segment]]:
    """Continuous stretches of recording: a new run, or a hole in a run, starts a new group.

    Runs never overlap in reality (a run starts after the previous one ended),
    so a group whose estimated start falls before the previous group's end is
    clamped to that end.
    """
    out: list[list[Segment]] = []
    for seg in segments:
        if out:
            last = out[-1][-1]
            if seg.run == last.run and abs(seg.start - last.end) <= tolerance:
                out[-1].append(seg)
                continue
        out.append([seg])
    for prev, cur in zip(out, out[1:]):
        shift = prev[-1].end - cur[0].start
        if shift > 0:
            cur[:] = [Segment(s.run, s.name, s.start + shift, s.end + shift, s.rel_start, s.rel_end, s.size)
                      for s in cur]
    return out


def holes(stretches: list[list[Segment]]) -> list[tuple[float, float, int, int]]:
    """(start, stop, run before, run after) of every hole between consecutive groups."""
    return [(a[-1].end, b[0].start, a[-1].run, b[0].run)
            for a, b in zip(stretches, stretches[1:]) if b[0].start > a[-1].end]


def ts_start_time(path: Path, limit: int = 256 * 1024) -> float | None:
    """The smallest PTS among the first PES headers of an MPEG-TS file, in seconds.

    The concat demuxer takes inpoint/outpoint on the file's own timestamps,
    which the MPEG-TS muxer offsets (mux delay); reading them here costs a few
    microseconds where ffprobe would cost a process.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except FileNotFoundError:
        return None
    best = None
    seen = 0
    for off in range(0, len(data) - 187, 188):
        if data[off] != 0x47 or not data[off + 1] & 0x40:
            continue
        afc = (data[off + 3] >> 4) & 0x3
        p = off + 4
        if afc == 2 or afc == 0:
            continue
        if afc == 3:
            p += 1 + data[p]
        if p + 14 > off + 188 or data[p:p + 3] != b"\x00\x00\x01":
            continue
        if not data[p + 7] & 0x80:
            continue
        b = data[p + 9:p + 14]
        pts = (((b[0] >> 1) & 0x7) << 30) | (b[1] << 22) | ((b[2] >> 1) << 15) | (b[3] << 7) | (b[4] >> 1)
        best = pts if best is None else min(best, pts)
        seen += 1
        if seen >= 32:
            break
    return None if best is None else best / 90000.0
