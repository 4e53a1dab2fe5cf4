"""The segment index: which wall-clock interval each recorded segment holds.

Protocol
--------
*Names.*  Every ffmpeg run *n* of a stream writes MPEG-TS segments into
``r<n:06d>/`` under sequence-numbered temp names ``r<n:06d>-<seq:06d>.ts.part``
and appends one line per *finished* segment to its own list ``r<n:06d>.csv``
(``name,start,end``: seconds of the run's timeline, written and flushed by
ffmpeg's segment muxer when it closes the segment).  Run numbers never
repeat and neither do sequence numbers within a run, so no two segments can
ever share a name, however short they are.

*Complete or absent.*  A segment gets its final name ``r<n:06d>-<seq:06d>.ts``
only from :func:`finalize_run`: once its list line is there, the temp file is
verified (not empty, whole TS packets, and its timestamps span the duration
the list gives), fsynced and renamed; a file that fails is removed (an out
of space write leaves a short file that ffmpeg still lists) and noted in
``r<n:06d>.absent`` (``name: reason`` lines) so fsck knows the hole is
known.  The daemon runs
the finalizer whenever a live run's list grows, when a run ends, and at
start-up for every run (a segmenter may have finished segments while no
daemon was running).  When a run's process is gone, temp files without a
list line (the segment a kill interrupted) are removed.  So a final name
always holds a complete segment, and the index below lists only final names
that exist: it is the truth about what a clip can cover.

*Wall-clock mapping.*  A finished segment's mtime is the moment ffmpeg closed
it, i.e. when the first packet of the next segment (or the stop) arrived:
an upper bound of the wall time of its ``end`` on the run's timeline.  The
run's anchor (the wall time of its timeline's zero) is the smallest
``mtime - end`` over its segments.  When a later segment's bound is far
later than the anchor predicts, the source was silent while ffmpeg waited: a
new anchor starts there, and the hole shows up as a gap.  Renames keep the
mtime; a copy of the tree must keep it too (``cp -a``, ``rsync -t``).

*Older recordings.*  Runs recorded before sequence numbers were named
``r<n:06d>-<YYYYmmddTHHMMSS>Z.ts`` (the UTC second the segment was opened,
written under the final name directly).  They are read as before: listed
names are final, and the anchor comes from the names (``name + 1 - start``,
less the expected slack of the minimum of those bounds).

*Who writes.*  The lists are ffmpeg's; the finalizer is the only other
writer of a run directory besides the janitor (which deletes whole final
segments).  Readers need no lock and ignore a last list line without its
newline (a write in progress).  Parses are cached by the list's (size,
mtime) and the run directory's mtime (a rename or a deletion changes it).
"""

from __future__ import annotations

import calendar
import csv
import io
import logging
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from storaged.store.atomic import fsync_dir
from storaged.supervise.ffmpeg import duration_of, probe_sync

log = logging.getLogger("storaged.streams")

# Rejections the ``.absent`` note could not take yet (a full disk), by (segments dir, run).
_UNNOTED: dict[tuple[str, int], list[str]] = {}
_UNNOTED_LOCK = threading.Lock()

SEQ_RE = re.compile(r"^r(\d{6})-(\d{6,})\.ts$")            # final name of a sequence-numbered segment
OLD_RE = re.compile(r"^r(\d{6})-(\d{8}T\d{6})Z\.ts$")     # older runs: the UTC second it was opened
NAME_RE = re.compile(r"^r(\d{6})-(?:\d{6,}|\d{8}T\d{6}Z)\.ts$")
PART = ".part"
LIST_RE = re.compile(r"^r(\d{6})\.csv$")
RUN_DIR_RE = re.compile(r"^r(\d{6})$")
TS_PACKET = 188
# A bound this much later than the anchor predicts means the source went silent.
ANCHOR_JUMP = 2.0
# Holes up to this long between segments of one run are timing noise, not gaps.
GAP_TOLERANCE = 1.0


def segment_pattern(run: int) -> str:
    """ffmpeg's output pattern: a temp name with the run's sequence number (see the module docstring)."""
    return f"r{run:06d}-%06d.ts{PART}"


def list_name(run: int) -> str:
    return f"r{run:06d}.csv"


def run_dir_name(run: int) -> str:
    """Each run's segments live in their own directory: listing one stays cheap."""
    return f"r{run:06d}"


def final_name(listed: str) -> str | None:
    """The final name of a list entry (a temp name loses ``.part``), or None for junk."""
    name = listed[: -len(PART)] if listed.endswith(PART) else listed
    return name if NAME_RE.match(name) else None


def name_time(name: str) -> float | None:
    m = OLD_RE.match(name)
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
    """Complete lines of a segment list, by final name; a torn last line is left for the next read."""
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
        name = final_name(row[0])
        if name is not None and end >= start:
            out.append((name, start, end))
    # Older runs' names carry a second: a name listed twice means ffmpeg reopened (truncated) that file
    # for a later segment, so only the last entry of a name describes what is on disk.
    last = {name: i for i, (name, _, _) in enumerate(out)}
    return [entry for i, entry in enumerate(out) if last[entry[0]] == i]


def map_run(run: int, entries: list[tuple[str, float, float]],
            files: dict[str, tuple[int, float]]) -> list[Segment]:
    """Wall-clock times for one run's present segments (see the module docstring).

    ``files`` maps a final name to its (size, mtime); entries without a file are left out.
    """
    pieces: list[list[tuple[str, float, float, float]]] = []
    bound = None
    old = False
    entries = [e for e in entries if e[0] in files]
    for i, (name, rel_start, rel_end) in enumerate(entries):
        opened = name_time(name)
        if opened is not None:
            old = True
            ub = opened + 1.0 - rel_start
        else:
            ub = files[name][1] - rel_end
            if bound is not None and i == len(entries) - 1:
                # The newest segment may have been closed late: by a stop, or by ffmpeg's read timeout
                # after the source went silent.  Its start is known from its predecessor's close.
                ub = min(ub, bound)
        if bound is None or ub > bound + ANCHOR_JUMP:
            pieces.append([])
            bound = ub
        bound = min(bound, ub)
        pieces[-1].append((name, rel_start, rel_end, ub))
    out = []
    for piece in pieces:
        anchor = min(p[3] for p in piece)
        if old:
            # A name's second is coarse: the minimum of n uniformly placed bounds overshoots by 1/(n+1).
            anchor -= 1.0 / (len(piece) + 1)
        for name, rel_start, rel_end, _ in piece:
            out.append(Segment(run, name, anchor + rel_start, anchor + rel_end, rel_start, rel_end,
                               files[name][0]))
    return out


def read_list(path: Path) -> list[tuple[str, float, float]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_list(fh.read())
    except FileNotFoundError:
        return []


class StreamIndex:
    """Cached view of one stream's segment lists.  Blocking: call from a thread."""

    def __init__(self, seg_dir: Path) -> None:
        self.dir = Path(seg_dir)
        self._cache: dict[int, tuple[tuple, list[Segment]]] = {}
        self._files: dict[tuple[int, str], tuple[int, float]] = {}
        self._merged: tuple | None = None

    def runs(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := LIST_RE.match(n)))

    def run_segments(self, run: int) -> list[Segment]:
        path = self.dir / list_name(run)
        run_dir = self.dir / run_dir_name(run)
        try:
            st = os.stat(path)
            dst = os.stat(run_dir)
        except FileNotFoundError:
            return []
        key = (st.st_size, st.st_mtime_ns, dst.st_mtime_ns)
        cached = self._cache.get(run)
        if cached and cached[0] == key:
            return cached[1]
        entries = read_list(path)
        present = set(os.listdir(run_dir))
        files = {}
        for name, _, _ in entries:
            if name not in present:
                continue
            known = self._files.get((run, name))
            if known is None:
                try:
                    fst = os.stat(run_dir / name)
                except FileNotFoundError:
                    continue
                # A final name's bytes never change: its size and mtime are cached for good.
                known = self._files[(run, name)] = (fst.st_size, fst.st_mtime_ns / 1e9)
            files[name] = known
        entries = self._late_start(run_dir, run, [e for e in entries if e[0] in files])
        segments = map_run(run, entries, files)
        self._cache[run] = (key, segments)
        return segments

    def _late_start(self, run_dir: Path, run: int,
                    entries: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
        """Move a run's first segment's start to its first video frame.

        ffmpeg's timeline starts at the first packet, but a copy begins at the
        first keyframe, which may come a GOP later.  Every segment of a run
        carries the same muxer offset and later ones start on their keyframe,
        so the first segment's delay is its first video PTS less the second's.
        """
        if len(entries) < 2 or entries[0][1] != 0.0:
            return entries
        name0, _, end0 = entries[0]
        lead = self._files.get((run, name0 + "#lead"))
        if lead is None:
            a = ts_first_video_pts(run_dir / name0)
            b = ts_first_video_pts(run_dir / entries[1][0])
            lead = (a - b) if a is not None and b is not None and 0 < a - b < end0 else 0.0
            self._files[(run, name0 + "#lead")] = (0, lead)
        else:
            lead = lead[1]
        return [(name0, lead, end0), *entries[1:]]

    def segments(self) -> list[Segment]:
        """Every present segment, by start.  The merged list is reused while no run changed (treat it as
        read-only)."""
        parts = [self.run_segments(run) for run in self.runs()]
        key = tuple(id(p) for p in parts)
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        out: list[Segment] = [s for p in parts for s in p]
        out.sort(key=lambda s: (s.start, s.run))
        self._merged = (key, out, parts)  # parts kept alive so their ids stay theirs
        return out

    def path(self, segment: Segment) -> Path:
        return self.dir / run_dir_name(segment.run) / segment.name


# -- finishing segments -------------------------------------------------------------------------------------

def _pes_times(data: bytes | memoryview, first_offset: int) -> dict[int, list[float]]:
    """PTS (seconds) of every PES header that starts in ``data``, by PID, in file order."""
    out: dict[int, list[float]] = {}
    for off in range(first_offset, len(data) - TS_PACKET + 1, TS_PACKET):
        hdr = _pes_header(data, off)
        if hdr is not None:
            pid, _, pts, _ = hdr
            if pts is not None:
                out.setdefault(pid, []).append(pts)
    return out


def _pes_header(data, off: int) -> tuple[int, int, float | None, bool] | None:
    """(pid, stream id, PTS seconds, random access) of a TS packet that starts a PES, else None."""
    if data[off] != 0x47 or not data[off + 1] & 0x40:
        return None
    pid = ((data[off + 1] & 0x1F) << 8) | data[off + 2]
    afc = (data[off + 3] >> 4) & 0x3
    p = off + 4
    if afc in (0, 2):
        return None
    rai = False
    if afc == 3:
        length = data[p]
        if length and p + 1 < off + TS_PACKET:
            rai = bool(data[p + 1] & 0x40)
        p += 1 + length
    if p + 14 > off + TS_PACKET or data[p] != 0 or data[p + 1] != 0 or data[p + 2] != 1:
        return None
    stream_id = data[p + 3]
    if not data[p + 7] & 0x80:
        return pid, stream_id, None, rai
    b = data[p + 9:p + 14]
    pts = (((b[0] >> 1) & 0x7) << 30) | (b[1] << 22) | ((b[2] >> 1) << 15) | (b[3] << 7) | (b[4] >> 1)
    return pid, stream_id, pts / 90000.0, rai


def ts_span(path: Path, window: int = 256 * 1024) -> float | None:
    """How many seconds an MPEG-TS file's timestamps cover: first PTS to the last frame's end.

    Reads the head and the tail only.  The last frame's duration is the
    typical PTS step of its stream near the end.
    """
    size = os.path.getsize(path)
    tail_start = max(0, size - window)
    with open(path, "rb") as fh:
        head = fh.read(window)
        fh.seek(tail_start)
        tail = fh.read()
    starts = _pes_times(head, 0)
    ends = _pes_times(tail, -tail_start % TS_PACKET)
    if not starts or not ends:
        return None
    first = min(min(v) for v in starts.values())
    last = 0.0
    for values in ends.values():
        ordered = sorted(set(values))
        steps = [b - a for a, b in zip(ordered, ordered[1:]) if b > a]
        step = statistics.median(steps) if steps else 0.0
        last = max(last, ordered[-1] + step)
    return last - first


def check_segment(path: Path, listed: float, first: bool = False) -> str | None:
    """Why a finished segment file is not what its list line says, or None when it is."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty"
    if size % TS_PACKET:
        return f"truncated: {size} bytes is not a whole number of TS packets"
    span = ts_span(path)
    if span is None:
        return "no timestamps"
    # One frame of slack either way: the list counts the last frame's duration exactly, we estimate it.
    # A run's first segment starts late by however long the source took to send a keyframe (ffmpeg drops
    # what comes before it), which nothing tells beforehand: its packets and timestamps are all we check.
    if not first and span < listed - max(0.25, 0.1 * listed):
        return f"holds {span:.2f} s of the {listed:.2f} s listed"
    return None


def finalize_run(seg_dir: Path, run: int, live: bool) -> tuple[list[str], list[str], bool]:
    """Give the listed, verified temp segments of a run their final names (see the module docstring).

    ``live``: the run's ffmpeg may still be writing; the newest entry is then
    retried later rather than rejected, and unlisted temp files are left alone.
    Returns (finalized, rejected with reasons, whether something waits for a retry).
    """
    run_dir = seg_dir / run_dir_name(run)
    try:
        present = set(os.listdir(run_dir))
    except FileNotFoundError:
        return [], [], False
    parts = {n for n in present if n.endswith(PART)}
    if not parts:
        _note_rejected(seg_dir, run, [])
        return [], [], False
    entries = read_list(seg_dir / list_name(run))
    finalized, rejected, retry = [], [], False
    for i, (name, rel_start, rel_end) in enumerate(entries):
        part = name + PART
        if part not in parts:
            continue
        parts.discard(part)
        problem = check_segment(run_dir / part, rel_end - rel_start, first=rel_start == 0)
        if problem is not None:
            if live and i == len(entries) - 1:
                retry = True  # the list line can come a moment before the last bytes are flushed
                continue
            log.warning("segment %s/%s rejected (%s): it is not in the recording", run_dir.name, name, problem)
            os.unlink(run_dir / part)
            rejected.append(f"{name}: {problem}")
            continue
        fd = os.open(run_dir / part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(run_dir / part, run_dir / name)
        finalized.append(name)
    if not live:
        for part in sorted(parts):  # never listed: the segment a stop or kill interrupted
            log.info("segment %s/%s was never finished; removed", run_dir.name, part)
            os.unlink(run_dir / part)
            rejected.append(f"{part}: never finished")
    _note_rejected(seg_dir, run, rejected)
    if finalized or rejected:
        fsync_dir(run_dir)
    return finalized, rejected, retry


def _note_rejected(seg_dir: Path, run: int, rejected: list[str]) -> None:
    """Note rejected segments in the run's ``.absent`` file, with any an earlier pass could not note.

    A full disk can refuse the note itself: the lines wait in memory and the next pass for the run
    (the list grows, the run ends) writes them.  Only a crash before that loses them; fsck then
    reports the hole as missing, which is the truth it can see.
    """
    key = (str(seg_dir), run)
    with _UNNOTED_LOCK:
        lines = _UNNOTED.pop(key, []) + list(rejected)
    if not lines:
        return
    try:
        note_absent(seg_dir, run, lines)
    except OSError as exc:
        log.warning("could not note the rejected segments of run %d yet: %s", run, exc)
        with _UNNOTED_LOCK:
            _UNNOTED[key] = lines + _UNNOTED.get(key, [])


def absent_name(run: int) -> str:
    return f"r{run:06d}.absent"


def note_absent(seg_dir: Path, run: int, lines: list[str]) -> None:
    """Record listed segments known to be gone (rejected, or acknowledged by fsck): holes, not damage."""
    with open(seg_dir / absent_name(run), "a", encoding="utf-8") as fh:
        fh.write("".join(line.replace("\n", " ") + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def known_absent(seg_dir: Path, run: int) -> set[str]:
    try:
        with open(seg_dir / absent_name(run), encoding="utf-8", errors="replace") as fh:
            return {line.split(":", 1)[0] for line in fh}
    except FileNotFoundError:
        return set()


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
    values = sorted(v for times in _pes_times(data, 0).values() for v in times[:32])
    return values[0] if values else None


def ts_first_video_pts(path: Path, limit: int = 512 * 1024) -> float | None:
    """The PTS (seconds) of the first video PES of an MPEG-TS file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except FileNotFoundError:
        return None
    for off in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        hdr = _pes_header(data, off)
        if hdr is not None and 0xE0 <= hdr[1] <= 0xEF and hdr[2] is not None:
            return hdr[2]
    return None


def ts_keyframes(path: Path) -> list[float]:
    """PTS (seconds, file order) of the video keyframes of an MPEG-TS file.

    A keyframe is a PES of a video stream (stream id 0xE0-0xEF) whose packet
    carries the random access indicator, which ffmpeg's MPEG-TS muxer sets on
    key frames.  One pass over the file's packet headers.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    out = []
    find = data.find
    off = find(b"\x47")
    while 0 <= off <= len(data) - TS_PACKET:
        if data[off + 1] & 0x40 and (data[off + 3] & 0x30) == 0x30 and data[off + 4] and data[off + 5] & 0x40:
            hdr = _pes_header(data, off)
            if hdr is not None and 0xE0 <= hdr[1] <= 0xEF and hdr[2] is not None:
                out.append(hdr[2])
        off += TS_PACKET
    return out


def check_run(seg_dir: Path, run: int, live: bool, deep: bool = False) -> list[tuple[Path, str, str]]:
    """fsck of one run: every segment against the run's list.  Blocking.

    Returns (path, kind, detail) with kind one of ``bad`` (listed, but empty,
    torn or shorter than listed: the index would promise what is not
    there), ``missing`` (listed, absent, after a present one: retention only
    ever removes a run's oldest segments), ``unfinished`` (a temp name the
    daemon has not finished: it does so at start-up; never reported for the
    live run) and ``unlisted`` (a final name the list does not have).
    ``deep`` also has ffprobe read every present segment.
    """
    run_dir = seg_dir / run_dir_name(run)
    try:
        present = set(os.listdir(run_dir))
    except FileNotFoundError:
        present = set()
    entries = read_list(seg_dir / list_name(run))
    absent = known_absent(seg_dir, run)
    out: list[tuple[Path, str, str]] = []
    seen_present = False
    for name, rel_start, rel_end in entries:
        path = run_dir / name
        if name not in present:
            if seen_present and name + PART not in present and name not in absent:
                out.append((path, "missing", f"listed ({rel_end - rel_start:.2f} s) but not on disk"))
            continue
        seen_present = True
        problem = check_segment(path, rel_end - rel_start, first=rel_start == 0)
        if problem is None and deep:
            try:
                info = probe_sync(path)
                got = duration_of(info)
            except Exception as exc:  # ffprobe could not read it at all
                problem = f"ffprobe: {exc}"
            else:
                want = rel_end - rel_start
                if got is None or (rel_start != 0 and got < want - max(0.25, 0.1 * want)):
                    problem = f"ffprobe reads {got} s of the {want:.2f} s listed"
        if problem is not None:
            out.append((path, "bad", problem))
    listed = {name for name, _, _ in entries}
    for name in sorted(present):
        if name.endswith(PART):
            if not live:
                out.append((run_dir / name, "unfinished", "temp segment no daemon has finished yet"))
        elif NAME_RE.match(name) and name not in listed:
            out.append((run_dir / name, "unlisted", "segment the run's list does not have"))
    return out


def ts_stream_types(path: Path, limit: int = 64 * 1024) -> set[int]:
    """The elementary stream types (ISO 13818-1 table 2-34, e.g. 0x1B H.264, 0x0F AAC in ADTS) of a TS file's
    first program, from its PAT and PMT."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except FileNotFoundError:
        return set()

    def section(pid: int) -> bytes | None:
        for off in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
            if data[off] != 0x47 or not data[off + 1] & 0x40:
                continue
            if (((data[off + 1] & 0x1F) << 8) | data[off + 2]) != pid:
                continue
            p = off + 4
            if (data[off + 3] >> 4) & 0x2:
                p += 1 + data[p]
            p += 1 + data[p]  # pointer field
            length = ((data[p + 1] & 0x0F) << 8) | data[p + 2]
            return data[p:min(p + 3 + length, off + TS_PACKET)]
        return None

    pat = section(0)
    if pat is None or len(pat) < 12:
        return set()
    pmt_pid = None
    for i in range(8, len(pat) - 4, 4):
        if (pat[i] << 8 | pat[i + 1]) != 0:
            pmt_pid = ((pat[i + 2] & 0x1F) << 8) | pat[i + 3]
            break
    pmt = section(pmt_pid) if pmt_pid is not None else None
    if pmt is None or len(pmt) < 12:
        return set()
    i = 12 + (((pmt[10] & 0x0F) << 8) | pmt[11])
    types = set()
    while i + 5 <= len(pmt) - 4:
        types.add(pmt[i])
        i += 5 + (((pmt[i + 3] & 0x0F) << 8) | pmt[i + 4])
    return types
