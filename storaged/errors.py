"""Domain errors.

Services raise these; they know nothing of HTTP frameworks but carry the
HTTP status a client should see.  One middleware (storaged.api.middleware)
renders every one of them as ``{"error_message": ...}`` plus ``extra``.
"""

from __future__ import annotations

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
