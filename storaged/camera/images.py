"""Camera images in the tree: naming, parsing times, selecting a time range.

Protocol
--------
*Layout.*  ``<data>/camera/<n>/<YYYYMMDD>/<YYYYMMDD-HHMMSS-mmm>.jpg``: one
folder per camera number, one per day, one JPEG per saved picture, named by
its capture time (milliseconds) in the box's time zone (setting
``timezone``).  Names sort in time order, so a range is a string range.

*Who writes.*  The motion supervisor (and any other program that follows the
naming) creates images by temp file + rename (a temp name starts with ``.``
and never matches the pattern), so a reader sees whole images or none.  The
/file routes delete them.  Nothing here keeps an index in memory: every
reader walks the folders, so images dropped in by others count the same.

*Memory.*  Readers hold at most one day's names (sorted) at a time.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo

from storaged.errors import BadRequest, missing_or_mistyped

IMAGE_RE = re.compile(r"^(\d{8})-(\d{6})-(\d{3})\.jpg$")
DAY_RE = re.compile(r"^\d{8}$")
KEY_RE = re.compile(r"^(\d{8})-(\d{6})$")
EXT = ".jpg"
MAX_CAMERA = 999_999


def image_name(when: datetime) -> str:
    """``YYYYMMDD-HHMMSS-mmm.jpg`` of a naive local time."""
    return when.strftime("%Y%m%d-%H%M%S-") + f"{when.microsecond // 1000:03d}{EXT}"


def key_of(when: datetime) -> str:
    """The contract's dateTime: ``YYYYMMDD-HHMMSS``."""
    return when.strftime("%Y%m%d-%H%M%S")


def time_of_name(name: str) -> datetime | None:
    """The naive local capture time a name holds; None for names that are not images."""
    m = IMAGE_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").replace(
            microsecond=int(m.group(3)) * 1000)
    except ValueError:
        return None


def parse_when(value: object, tz: ZoneInfo, field: str) -> datetime:
    """An ISO date/time or ``YYYYMMDD-HHMMSS`` as a naive time in the box's zone.

    ISO values with an offset (or ``Z``) are converted into the box's zone;
    values without one are taken as box time already.
    """
    if not isinstance(value, str) or not value.strip():
        raise missing_or_mistyped(field, None if isinstance(value, str) else value,
                                  "an ISO date or YYYYMMDD-HHMMSS (a string)")
    raw = value.strip()
    m = KEY_RE.match(raw)
    try:
        if m:
            return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")
        if len(raw) == 10 and raw[4] == "-":
            return datetime.combine(date.fromisoformat(raw), datetime.min.time())
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field} is not a date: {raw!r} (use ISO 8601 or YYYYMMDD-HHMMSS)") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(tz).replace(tzinfo=None)
    return parsed


def range_bounds(start: datetime, end: datetime) -> tuple[str, str]:
    """Name bounds (inclusive) covering whole seconds start..end."""
    return key_of(start) + "-000", key_of(end) + "-999"


def _days(cam_dir: Path, lo: str, hi: str) -> list[str]:
    try:
        names = os.listdir(cam_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(d for d in names if DAY_RE.match(d) and lo[:8] <= d <= hi[:8])


def _day_names(day_dir: Path, lo: str, hi: str) -> Iterator[str]:
    """Unsorted image names of one day within [lo, hi] (stems compared)."""
    try:
        it = os.scandir(day_dir)
    except (FileNotFoundError, NotADirectoryError):
        return
    with it:
        for entry in it:
            name = entry.name
            if IMAGE_RE.match(name) and lo <= name[:19] <= hi:
                yield name


def count_range(cam_dir: Path, lo: str, hi: str) -> int:
    """How many images lie in [lo, hi].  Streams: nothing is sorted or kept.  Blocking."""
    return sum(1 for day in _days(cam_dir, lo, hi) for _ in _day_names(cam_dir / day, lo, hi))


def iter_range(cam_dir: Path, lo: str, hi: str) -> Iterator[Path]:
    """The images in [lo, hi] in time order.  Holds one day's names at a time.  Blocking."""
    for day in _days(cam_dir, lo, hi):
        for name in sorted(_day_names(cam_dir / day, lo, hi)):
            yield cam_dir / day / name


def select(cam_dir: Path, lo: str, hi: str, skip: int, limit: int) -> Iterator[Path]:
    """Every ``skip+1``-th image of the range, at most ``limit`` of them."""
    step = skip + 1
    taken = 0
    for i, path in enumerate(iter_range(cam_dir, lo, hi)):
        if i % step:
            continue
        if taken >= limit:
            return
        taken += 1
        yield path


def selected_count(total: int, skip: int) -> int:
    return (total + skip) // (skip + 1)


def spaced(cam_dir: Path, lo: str, hi: str, frames: int) -> list[Path]:
    """``frames`` images evenly spaced over the range (first and last included).  Blocking."""
    total = count_range(cam_dir, lo, hi)
    if total == 0 or frames <= 0:
        return []
    if frames >= total:
        return list(iter_range(cam_dir, lo, hi))
    if frames == 1:
        wanted = iter([0])
    else:
        wanted = iter(sorted({round(k * (total - 1) / (frames - 1)) for k in range(frames)}))
    out = []
    target = next(wanted, None)
    for i, path in enumerate(iter_range(cam_dir, lo, hi)):
        if target is None:
            break
        if i == target:
            out.append(path)
            target = next(wanted, None)
    return out


def day_images(cam_dir: Path, day: str, newest: int) -> tuple[int, list[str]]:
    """How many images camera folder ``cam_dir`` holds for ``day`` (YYYYMMDD), and the names of the
    ``newest`` latest ones, newest first.  Blocking."""
    names = sorted(_day_names(cam_dir / day, "", "~"))
    return len(names), names[:-newest - 1:-1] if newest else []


def capture_time(path: Path, name: str | None = None) -> datetime | None:
    return time_of_name(name or path.name)


def day_folder(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def older_than(days: float, now: datetime) -> datetime:
    return now - timedelta(days=days)
