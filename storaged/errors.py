"""Domain errors.

Services raise these; they know nothing of HTTP frameworks but carry the
HTTP status a client should see.  One middleware (storaged.api.middleware)
renders every one of them as ``{"error_message": ...}`` plus ``extra``.
"""

from __future__ import annotations

import errno
import json
from typing import Any


class StoragedError(Exception):
    status = 500

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra


class BadRequest(StoragedError):
    status = 400


class Unauthorized(StoragedError):
    status = 401


class NotFound(StoragedError):
    status = 404


class Conflict(StoragedError):
    status = 409


class PayloadTooLarge(StoragedError):
    status = 413


class InsufficientStorage(StoragedError):
    status = 507


class StorageUnavailable(StoragedError):
    status = 503


class DamagedRecord(StoragedError, ValueError):
    """A file the daemon wrote can no longer be read back (torn or changed behind its back).

    Also a ValueError, so code that skips unreadable records in a listing keeps doing so."""
    status = 500

    def __init__(self, name: str, why: str = "not valid JSON") -> None:
        super().__init__(f"damaged record {name}: {why}; run `storaged fsck` (`--repair` moves it to lost+found/)",
                         damaged=name)


# The data filesystem's faults, whatever write met them: one mapping for every route.
_FAULTS = {
    errno.ENOSPC: (InsufficientStorage, "insufficient storage: the data filesystem is full"),
    errno.EDQUOT: (InsufficientStorage, "insufficient storage: the disk quota of the data filesystem is used up"),
    errno.EROFS: (StorageUnavailable, "the data filesystem is read-only: nothing can be written until it is "
                                      "remounted read-write"),
    errno.EIO: (StorageUnavailable, "I/O error on the data filesystem: the disk may be failing; check the kernel "
                                    "log and run `storaged fsck`"),
}


def storage_fault(exc: BaseException) -> StoragedError | None:
    """The domain error for a disk fault (ENOSPC, EDQUOT, EROFS, EIO) anywhere in ``exc``'s chain, else None.

    The message names the cause (``(ENOSPC)``), and so does the ``cause`` field of the answer."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FAULTS:
            cls, text = _FAULTS[exc.errno]
            name = errno.errorcode[exc.errno]
            return cls(f"{text} ({name})", cause=name)
        exc = exc.__cause__ or exc.__context__
    return None


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def missing_or_mistyped(name: str, value: Any, expected: str) -> BadRequest:
    """The 400 for a field that is absent or of the wrong type, saying which.

    ``{"file_id": 42}`` is not a missing file_id: telling a client "file_id is required" when it
    sent one sends it looking in the wrong place.
    """
    if value is None:
        return BadRequest(f"{name} is required: {expected}")
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return BadRequest(f"{name} must be {expected} (got {shown}, a JSON {json_type(value)})")
