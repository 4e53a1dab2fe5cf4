"""RFC 3339 times <-> integer microseconds since the epoch (UTC).

In: ``2023-06-07T08:00:00Z``, ``2023-06-07t08:00:00.25+02:00``,
``2023-06-07 08:00:00.123456789-05:30`` (fractions beyond microseconds are
truncated).  A time without an offset is refused: it would be ambiguous.
Out: UTC with ``Z``, a fraction only when there is one
(``2023-06-07T08:00:00Z``, ``2023-06-07T08:00:00.250000Z``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from storaged.errors import BadRequest

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+\- ])(\d{2}):(\d{2}))$")
EXAMPLE = "2023-06-07T08:00:00Z"


def malformed(what: str) -> BadRequest:
    return BadRequest(f"malformed {what}: expected an RFC 3339 time such as {EXAMPLE}", field=what)


def parse_us(raw: object, what: str, *, plus_as_space: bool = False) -> int:
    """Microseconds since the epoch of an RFC 3339 string or an aware datetime.

    ``plus_as_space``: a query string decodes an unescaped ``+`` to a space,
    so there a space before the offset is read as ``+``.
    """
    if isinstance(raw, datetime):
        if raw.tzinfo is None or raw.utcoffset() is None:
            raise BadRequest(f"malformed {what}: a datetime needs a time zone", field=what)
        return from_datetime(raw)
    if not isinstance(raw, str):
        raise malformed(what)
    m = _RFC3339.match(raw.strip() if plus_as_space else raw)
    if not m:
        raise malformed(what)
    year, month, day, hour, minute, second, frac, zulu, sign, oh, om = m.groups()
    if sign == " " and not plus_as_space:
        raise malformed(what)
    try:
        offset = timedelta(0)
        if not zulu:
            if int(oh) > 23 or int(om) > 59:
                raise ValueError("offset")
            offset = timedelta(hours=int(oh), minutes=int(om))
            if sign == "-":
                offset = -offset
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                      int((frac or "0")[:6].ljust(6, "0")), tzinfo=timezone(offset))
    except (ValueError, OverflowError):
        raise malformed(what) from None
    return from_datetime(dt)


# Times as format_us writes them; five groups: day, hour, minute, second, fraction.
CANONICAL_PATTERN = r"(\d{4}-\d\d-\d\d)T([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{6}))?Z"
_CANONICAL = re.compile(CANONICAL_PATTERN)
_DAY_CACHE: dict[str, int] = {}


def parse_canonical(text: object) -> int | None:
    """Fast path for times as this module writes them; None for anything else."""
    if type(text) is not str:
        return None
    m = _CANONICAL.fullmatch(text)
    return None if m is None else canonical_us(*m.groups())


def canonical_us(day: str, hour: str, minute: str, second: str, frac: str | None) -> int | None:
    """Microseconds of the groups of CANONICAL_PATTERN; None for a date that does not exist.

    Start-up parses two times per record, so a day's offset is computed (and
    the date validated) once and reused.
    """
    day_us = _DAY_CACHE.get(day)
    if day_us is None:
        try:
            day_us = from_datetime(datetime.fromisoformat(day).replace(tzinfo=timezone.utc))
        except ValueError:
            return None
        if len(_DAY_CACHE) < 100_000:
            _DAY_CACHE[day] = day_us
    us = day_us + ((int(hour) * 60 + int(minute)) * 60 + int(second)) * 1_000_000
    return us + int(frac) if frac else us


def from_datetime(dt: datetime) -> int:
    return (dt - EPOCH) // ONE_US


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def format_us(us: int) -> str:
    dt = to_datetime(us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.year < 1000:  # strftime does not pad years on every libc
        text = f"{dt.year:04d}" + text[text.index("-"):]
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def now_us() -> int:
    return from_datetime(datetime.now(timezone.utc))
