"""What the split learnt of a stored video's keyframes, cached beside the object.

Protocol
--------
*What.*  ``<data>/<id[:2]>/<id[2:]>/keyframes.json`` holds, for the object's
video: its duration, whether its container seeks exactly, and for each race
start asked so far the keyframe the seeking ffprobe found at or before it
(``storaged.sessions.split.probe_source``).  An object's bytes never change,
so neither do these answers: a split whose starts are all known runs no
ffprobe at all, and one with new starts asks ffprobe about those only.

*Spans.*  In a container with an index (MP4/MOV, Matroska) a seek lands on
the *last* keyframe at or before the time asked.  So the answer K for a
start S holds for every start in ``[K.pts, S]``: a later keyframe in there
would have been the answer for S.  Such spans are disjoint, and a start in
none of them is a miss.  For other containers (MPEG-TS seeks by byte
estimate) only the very starts asked are answers (``exact``).

*Trust.*  The file names its object id and size.  A file that does not
parse, names another object or size, or holds entries of the wrong shape or
overlapping spans is ignored whole (and replaced by the next write): a cache
never fails a split, it only saves a probe.

*Write.*  By the split job while its ffmpeg pass runs, under the object's
lock (the one its delete and pin take) and only while the object's
``meta.json`` is there, so it never lands in a directory being deleted.
Temp file, fsync, rename: a crash leaves the old file, the new one or a
stray temp (swept like every temp), never a torn ``keyframes.json``.  The
directory is not fsynced: losing the file costs one probe.  A heal of the
object's bytes (``ObjectStore._heal``) removes the file, which may have been
learnt from the damaged bytes.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any

from storaged.store.atomic import dumps, read_json, sync_lock, write_bytes
from storaged.store.layout import Layout
from storaged.store.objects import KEYFRAMES, META

log = logging.getLogger("storaged.sessions")

VERSION = 1


def _key(start: float) -> str:
    return f"{start:.6f}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Keyframes:
    """The cache of one object's video (or, without a ``file_id``, of one split only)."""

    def __init__(self, file_id: str | None, size: int, duration: float, indexed: bool) -> None:
        self.file_id = file_id
        self.size = size
        self.duration = duration
        self.indexed = indexed
        self.spans: list[list[float]] = []  # [pts, dts, upto], sorted by pts, disjoint
        self.exact: dict[str, list[float] | None] = {}  # start -> [pts, dts], or None: no keyframe found
        self.changed = False

    # -- lookups --------------------------------------------------------------------------
    def knows(self, start: float) -> bool:
        return _key(start) in self.exact or self._span(start) is not None

    def keyframe(self, start: float) -> dict[str, float] | None:
        """The keyframe at or before ``start`` ({"pts", "dts"}), None when unknown or there is none."""
        found = self.exact.get(_key(start))
        if found is None:
            span = self._span(start)
            found = span[:2] if span is not None else None
        return {"pts": found[0], "dts": found[1]} if found is not None else None

    def _span(self, start: float) -> list[float] | None:
        if not self.indexed:
            return None
        i = bisect.bisect_right(self.spans, start, key=lambda span: span[0]) - 1
        if i >= 0 and start <= self.spans[i][2]:
            return self.spans[i]
        return None

    # -- learning -------------------------------------------------------------------------
    def learn(self, starts: list[float], found: list[dict | None]) -> None:
        """Take in ffprobe's answers (``probe_source``) for ``starts``."""
        for start, kf in zip(starts, found):
            answer = None if kf is None else [kf["pts"], kf["dts"]]
            if self.exact.get(_key(start), False) != answer:
                self.exact[_key(start)] = answer
                self.changed = True
            if answer is not None and self.indexed:
                self._add_span([answer[0], answer[1], max(answer[0], start)])

    def _add_span(self, new: list[float]) -> None:
        for span in self.spans:
            if span[0] == new[0] and span[1] == new[1]:
                if new[2] > span[2]:
                    span[2] = new[2]
                    self.changed = True
                    self._drop_overlaps(span)
                return
        self.spans.append(new)
        self.spans.sort(key=lambda span: span[0])
        self.changed = True
        self._drop_overlaps(new)

    def _drop_overlaps(self, keep: list[float]) -> None:
        """Answers never overlap when seeks land on the last keyframe; if ffprobe ever says otherwise,
        believe the newest answer."""
        self.spans = [s for s in self.spans
                      if s is keep or s[2] < keep[0] or keep[2] < s[0]]

    # -- the file -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "file_id": self.file_id, "size": self.size, "duration": self.duration,
                "indexed": self.indexed, "spans": self.spans, "exact": self.exact}

    @classmethod
    def from_json(cls, doc: Any, file_id: str, size: int) -> Keyframes | None:
        """The cache in ``doc`` if it is well formed and about this object; else None."""
        if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("file_id") != file_id \
                or doc.get("size") != size or not isinstance(doc.get("indexed"), bool):
            return None
        duration, spans, exact = doc.get("duration"), doc.get("spans"), doc.get("exact")
        if not _number(duration) or duration <= 0 or not isinstance(spans, list) or not isinstance(exact, dict):
            return None
        for span in spans:
            if not (isinstance(span, list) and len(span) == 3 and all(map(_number, span))
                    and span[1] <= span[0] <= span[2]):
                return None
        if any(a[2] >= b[0] for a, b in zip(spans, spans[1:])):
            return None  # not sorted, or overlapping
        for start, answer in exact.items():
            if not isinstance(start, str) or not (answer is None or (
                    isinstance(answer, list) and len(answer) == 2 and all(map(_number, answer)))):
                return None
        out = cls(file_id, size, float(duration), doc["indexed"])
        out.spans = [[float(x) for x in span] for span in spans]
        out.exact = {start: None if answer is None else [float(x) for x in answer] for start, answer in exact.items()}
        return out


def load(layout: Layout, file_id: str, size: int) -> Keyframes | None:
    """The object's cache, or None when there is none or it cannot be trusted.  Blocking."""
    path = layout.object_dir(file_id) / KEYFRAMES
    try:
        doc = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    found = Keyframes.from_json(doc, file_id, size)
    if found is None:
        log.warning("ignoring %s: not a keyframe cache of this object", path)
    return found


def save(layout: Layout, cache: Keyframes) -> bool:
    """Write the cache beside its object (see the protocol); False when the object is gone.  Blocking."""
    assert cache.file_id is not None
    obj = layout.object_dir(cache.file_id)
    with sync_lock(layout.object_lock(cache.file_id)):
        if not (obj / META).exists():
            return False
        write_bytes(obj / KEYFRAMES, dumps(cache.to_json()), sync_dir=False)
    cache.changed = False
    return True
