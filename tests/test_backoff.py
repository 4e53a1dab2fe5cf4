"""The one retry schedule and the one wake-or-timeout wait (storaged.supervise.backoff)."""

from __future__ import annotations

import asyncio

from storaged.supervise.backoff import Backoff, woken


def test_waits_double_up_to_the_longest_with_at_most_ten_percent_jitter_and_a_success_resets():
    backoff = Backoff(first=1.0, longest=8.0)
    waits = [backoff.failed() for _ in range(6)]
    for wait, base in zip(waits, [1, 2, 4, 8, 8, 8]):
        assert base * 0.9 <= wait <= base
    backoff.succeeded()
    assert backoff.delay() == 0.0
    assert 0.9 <= backoff.failed() <= 1.0


def test_a_restart_after_useful_work_or_a_long_run_waits_the_shortest_again():
    backoff = Backoff(first=1.0, longest=30.0)
    for _ in range(4):
        backoff.restart_delay(did_work=False, ran_for=0.5)
    assert backoff.restart_delay(did_work=False, ran_for=0.5) >= 16 * 0.9
    assert backoff.restart_delay(did_work=True) <= 1.0
    backoff.restart_delay(did_work=False)
    assert backoff.restart_delay(did_work=False, ran_for=31.0) <= 1.0


async def test_woken_returns_when_the_event_is_set_or_the_time_is_up():
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await woken(event, 60.0)  # returns long before the timeout: the event woke it
    assert event.is_set()
    quiet = asyncio.Event()
    await woken(quiet, 0.01)
    assert not quiet.is_set()


async def test_a_cancel_that_meets_a_wake_stays_a_cancel():
    """A loop woken and cancelled at the same instant must stop, or its owner's close() waits forever.

    (``asyncio.wait_for`` on Python 3.11 returns the wake and swallows the cancel.)"""
    wake = asyncio.Event()

    async def loop() -> None:
        while True:
            wake.clear()
            await woken(wake, 60.0)

    for _ in range(20):
        task = asyncio.create_task(loop())
        await asyncio.sleep(0.001)
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5.0)
        assert task in done and task.cancelled()
