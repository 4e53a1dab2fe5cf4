"""Pages as a real browser sees them: Debian's chromium, headless, driven over DevTools (tests/browser.py)."""

from __future__ import annotations

import psutil
import pytest

from tests.browser import Browser
from tests.helpers import wait_until


@pytest.fixture
async def browser():
    async with Browser() as b:
        yield b


async def test_player_page_plays_the_video_muted_with_controls(client, browser, video_10s):
    stored = await (await client.post("/upload", params={"name": "ten.mp4"}, data=video_10s.read_bytes())).json()
    fid = stored["file_id"]
    page = await browser.new_page()
    await page.goto(str(client.make_url(f"/data/{fid[:2]}/{fid[2:]}/ten.mp4?play")))
    assert await page.evaluate("[!!document.querySelector('video').controls, document.querySelector('video').muted]") \
        == [True, True]
    # Autoplay (browsers allow it only muted): the clock runs without anyone pressing play.
    played = await page.wait_for("(v => !v.error && v.currentTime > 1 && v.currentTime)(document.querySelector('video'))",
                                 timeout=30)
    assert played > 1


async def test_docs_lists_every_route_in_a_browser_without_javascript(client, browser):
    spec = await (await client.get("/openapi.json")).json()
    expected = sorted(f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops)
    page = await browser.new_page()
    await page.send("Emulation.setScriptExecutionDisabled", {"value": True})
    await page.goto(str(client.make_url("/docs")))
    await page.send("Emulation.setScriptExecutionDisabled", {"value": False})  # to read the page back
    shown = await page.evaluate("[...document.querySelectorAll('.op h3')].filter(h => h.querySelector('.verb'))"
                                ".map(h => h.querySelector('.verb').innerText + ' ' + h.querySelector('code').innerText)")
    assert sorted(shown) == expected


async def test_the_browser_leaves_no_process_and_no_profile_behind():
    async with Browser() as b:
        page = await b.new_page()
        await page.goto("data:text/html,<title>t</title>")
        assert await page.evaluate("document.title") == "t"
        pid, profile = b.proc.pid, b.profile
        children = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    assert children, "chromium runs its pages in child processes"

    def ended(p: int) -> bool:
        try:
            return psutil.Process(p).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    async def all_ended() -> bool:
        return all(ended(p) for p in [pid, *children])

    await wait_until(all_ended, timeout=10, what="chromium's processes gone")
    assert not profile.exists()
