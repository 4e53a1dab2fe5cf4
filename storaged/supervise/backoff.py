"""Backoff: the one schedule of waits between retries of something that fails.

Waits start at ``first`` seconds and double after each failure up to
``longest``; a success resets them.  A little jitter (up to 10 %) keeps many
retriers (outbox entries, restarted processes) from waking in lock step.

*Restarting a supervised process* (the segmenter, a camera's ffmpeg):
:meth:`Backoff.restart_delay` after each run; the reset rule is that a run
that did useful work (recorded a segment, saved an image) or lasted longer
than ``longest`` counts as a success, so the next wait is ``first`` again.

*Waiting between passes* of a loop that can be woken early (the job runner,
the storage tier's outbox, the janitor), or for an event with a deadline (the
drain of requests at shutdown): :func:`woken`.
"""

from __future__ import annotations

import asyncio

import random


class Backoff:
    def __init__(self, first: float = 1.0, longest: float = 30.0, *, jitter: float = 0.1) -> None:
        self.first = max(0.0, first)
        self.longest = max(self.first, longest)
        self.jitter = jitter
        self.failures = 0

    def delay(self, failures: int | None = None) -> float:
        """The wait before the next try after ``failures`` failures in a row (default: this one's count)."""
        n = self.failures if failures is None else failures
        if n <= 0:
            return 0.0
        base = min(self.longest, self.first * 2 ** min(n - 1, 60))
        return base * (1 - self.jitter * random.random())

    def failed(self) -> float:
        """Count a failure; answer the wait before the next try."""
        self.failures += 1
        return self.delay()

    def succeeded(self) -> None:
        self.failures = 0

    def restart_delay(self, *, did_work: bool, ran_for: float = 0.0) -> float:
        """The wait before restarting a process whose run just ended (see the reset rule above)."""
        if did_work or ran_for > self.longest:
            self.succeeded()
        return self.failed()


async def woken(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass (None: no limit), for loops that wake early.

    Not ``wait_for``: on Python 3.11 a cancel that meets its timeout comes out as
    TimeoutError, so a loop ignoring timeouts swallowed the cancel and its owner's
    close() waited forever.  ``asyncio.timeout`` tells the two apart.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
