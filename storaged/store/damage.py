"""Damaged records met while listing: skipped, logged, and reported to the request that met them.

A listing (records of a kind, objects' meta) that finds a file it cannot
parse skips it rather than failing the whole list, calls :func:`skipped`,
and goes on.  The HTTP layer gives each request a fresh list in
:data:`SKIPPED` (a context variable: ``asyncio.to_thread`` copies the
context, so listings in worker threads append to the request's own list) and
turns it into a response header.  Outside a request the names are only
logged.  ``storaged fsck`` finds the same files and ``--repair`` moves them
to ``lost+found/``.
"""

from __future__ import annotations

import contextvars
import logging

log = logging.getLogger("storaged.store")

SKIPPED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("storaged_skipped", default=None)
_warned: set[str] = set()  # one warning per damaged file per process: listings are polled


def skipped(name: str, why: str) -> None:
    """Note that the record ``name`` (relative to the data root) was left out of a listing."""
    if name not in _warned:
        _warned.add(name)
        log.warning("skipped damaged record %s (%s); run `storaged fsck`", name, why)
    found = SKIPPED.get()
    if found is not None:
        found.append(name)
