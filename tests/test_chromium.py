"""Pages as a real browser sees them: Debian's chromium, headless, driven over DevTools (tests/browser.py)."""

from __future__ import annotations

import pytest

from tests.browser import Browser


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
