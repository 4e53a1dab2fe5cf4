"""Playback without cutting: recorded spans, HLS playlists and progressive MP4 over the segments.

Protocol
--------
*What is read.*  Only the stream's segment index (storaged.recording.index):
final names, complete by construction, with their wall-clock times.  Nothing
is written to the tree except the concat script of a progressive playback,
a temp file under ``<data>/tmp`` removed when the playback ends (and swept
at start-up if a crash leaves it).

*HLS.*  A VOD playlist lists whole segments that overlap the range (no
trimming: the first and last segments may start before and end after it),
each with its exact ``EXT-X-PROGRAM-DATE-TIME``; ``EXT-X-DISCONTINUITY``
before the first segment of every new stretch (a gap, or a new run of the
segmenter).  The live playlist is a sliding window over the newest run
(media sequence = the first listed segment's sequence number in its run; a
new run starts a new sequence after a discontinuity).  Segments are served
by name with Range and a year-long immutable cache: a final name never
changes its bytes.  Each segment's lines are rendered once (by run, name and
times) and each index list's entries once, so a playlist is a bisect and a
join (a day of 10 s segments takes milliseconds; see BENCHMARKS.md).

*Progressive.*  One ``ffmpeg -f concat … -c copy`` per playback writing a
fragmented MP4 to a pipe that the handler streams as it comes (the pipe's
back-pressure keeps memory flat); it starts at the keyframe at or before
``start``, plays through gaps (they are skipped), and is stopped (q, TERM,
KILL) when the client goes away or the handler ends, whichever comes first.
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from storaged.recording import clips as clip_plan
from storaged.recording import index as idx

HLS_WINDOW = 6  # segments in the live playlist


def _span(group: list[idx.Segment], a: float, b: float) -> dict[str, Any]:
    return {"start": round(a, 3), "end": round(b, 3), "duration": round(b - a, 3),
            "segments": sum(1 for s in group if s.end > a and s.start < b)}


# No segment is longer than this (a wall-clock cut every stream_segment_time, at the next keyframe).
LONGEST_SEGMENT = 3600.0


def in_range(segments: list[idx.Segment], start: float | None, end: float | None) -> list[idx.Segment]:
    """The segments overlapping [start, end) (sorted by start; bisect, so a month stays fast)."""
    if start is None and end is None:
        return segments
    lo = 0 if start is None else bisect.bisect_left(segments, start - LONGEST_SEGMENT, key=lambda s: s.start)
    hi = len(segments) if end is None else bisect.bisect_left(segments, end, key=lambda s: s.start)
    return [s for s in segments[lo:hi] if start is None or s.end > start]


def recordings(segments: list[idx.Segment], start: float | None, end: float | None) -> dict[str, Any]:
    """Recorded spans and the gaps between them within [start, end] (unbounded sides: what was recorded)."""
    stretches = idx.groups(in_range(segments, start, end))
    spans, gaps = [], []
    first = start if start is not None else (stretches[0][0].start if stretches else None)
    cursor = first
    for group in stretches:
        a = max(group[0].start, start) if start is not None else group[0].start
        b = min(group[-1].end, end) if end is not None else group[-1].end
        if b <= a:
            continue
        if cursor is not None and a - cursor > 0.001:
            gaps.append({"start": round(cursor, 3), "end": round(a, 3), "duration": round(a - cursor, 3)})
        spans.append(_span(group, a, b))
        cursor = b
    if end is not None and cursor is not None and end - cursor > 0.001:
        gaps.append({"start": round(cursor, 3), "end": round(end, 3), "duration": round(end - cursor, 3)})
    return {"start": start, "end": end, "spans": spans, "gaps": gaps,
            "recorded": round(sum(s["duration"] for s in spans), 3)}


def _pdt(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def segment_uri(seg: idx.Segment) -> str:
    return f"segments/{idx.run_dir_name(seg.run)}/{seg.name}"


def _sequence(seg: idx.Segment) -> int | None:
    m = idx.SEQ_RE.match(seg.name)
    return int(m.group(2)) if m else None


# A segment's three playlist lines depend only on its run, name and times: each is rendered once.
_ENTRY_CACHE: dict[tuple[int, str, float, float], str] = {}
_ENTRY_CACHE_MAX = 500_000
# The rendered entries of a whole segment list (the index hands out the same list while nothing changed).
_RENDERED: dict[int, tuple[list[idx.Segment], list[str], int]] = {}


def _entry(seg: idx.Segment) -> str:
    key = (seg.run, seg.name, seg.start, seg.end)
    text = _ENTRY_CACHE.get(key)
    if text is None:
        if len(_ENTRY_CACHE) >= _ENTRY_CACHE_MAX:
            _ENTRY_CACHE.clear()
        text = _ENTRY_CACHE[key] = (f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.start)}\n"
                                    f"#EXTINF:{seg.duration:.3f},\n{segment_uri(seg)}\n")
    return text


def _rendered(segments: list[idx.Segment]) -> tuple[list[idx.Segment], list[str], int]:
    """(segments, their entries each with a discontinuity tag when it starts a new stretch, target duration)."""
    got = _RENDERED.get(id(segments))
    if got is not None and got[0] is segments:
        return got
    entries = []
    longest = 1.0
    previous = None
    for seg in segments:
        text = _entry(seg)
        if previous is not None and (seg.run != previous.run or seg.start - previous.end > idx.GAP_TOLERANCE):
            text = "#EXT-X-DISCONTINUITY\n" + text
        entries.append(text)
        longest = max(longest, seg.end - seg.start)
        previous = seg
    if len(_RENDERED) >= 64:
        _RENDERED.clear()
    got = _RENDERED[id(segments)] = (segments, entries, math.ceil(longest))
    return got


def playlist(segments: list[idx.Segment], start: float | None, end: float | None, live: bool) -> str:
    """An HLS media playlist (RFC 8216) over whole segments; see the module docstring."""
    _, entries, target = _rendered(segments)
    if live:
        newest = segments[-1].run if segments else None
        hi = len(segments)
        lo = hi
        while lo > 0 and hi - lo < HLS_WINDOW and segments[lo - 1].run == newest:
            lo -= 1
        first_seq = (_sequence(segments[lo]) if lo < hi else 0) or 0
    else:
        lo = 0 if start is None else bisect.bisect_left(segments, start - LONGEST_SEGMENT, key=lambda s: s.start)
        while start is not None and lo < len(segments) and segments[lo].end <= start:
            lo += 1
        hi = len(segments) if end is None else bisect.bisect_left(segments, end, key=lambda s: s.start)
        first_seq = 0
    body = entries[lo:hi]
    if body and body[0].startswith("#EXT-X-DISCONTINUITY"):
        body[0] = body[0].split("\n", 1)[1]
    head = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n"
            f"#EXT-X-MEDIA-SEQUENCE:{first_seq}\n#EXT-X-INDEPENDENT-SEGMENTS\n"
            + ("" if live else "#EXT-X-PLAYLIST-TYPE:VOD\n"))
    return head + "".join(body) + ("" if live else "#EXT-X-ENDLIST\n")


def progressive_plan(index: idx.StreamIndex, segments: list[idx.Segment], start: float,
                     end: float) -> tuple[str, float, list[str]] | None:
    """(ffconcat script, wall-clock time of its first frame, copy options) for [start, end], or None when
    nothing is recorded.

    Blocking (reads the first segment's keyframes).
    """
    plan = clip_plan.plan(in_range(segments, start, end), start, end)
    items = [item for c in plan["clips"] for item in c["items"]]
    if not items:
        return None
    paths = [index.path(seg) for seg, _, _ in items]
    script, lead = clip_plan.concat_list(items, paths)
    return script, plan["clips"][0]["start"] - lead, clip_plan.copy_args(paths[0])


def fragmented_mp4_argv(ffmpeg_base: list[str], concat_path: Path, copy: list[str]) -> list[str]:
    return [*ffmpeg_base, "-f", "concat", "-safe", "0", "-i", str(concat_path),
            "-map", "0:v?", "-map", "0:a?", *copy, "-f", "mp4",
            "-movflags", "frag_keyframe+empty_moov+default_base_moof", "pipe:1"]


def file_argv(ffmpeg_base: list[str], path: Path, start: float, end: float | None) -> list[str]:
    """An uploaded video from the keyframe at or before ``start`` (input seeking with -c copy does that)."""
    span = ["-t", f"{end - start:.3f}"] if end is not None else []
    return [*ffmpeg_base, "-ss", f"{start:.3f}", "-i", str(path), *span,
            "-map", "0:v?", "-map", "0:a?", "-c", "copy", "-f", "mp4",
            "-movflags", "frag_keyframe+empty_moov+default_base_moof", "pipe:1"]
