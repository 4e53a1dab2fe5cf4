"""Screenshots of the main pages, as PNGs under docs/screenshots/ (linked from the README).

    .venv/bin/python tools/screenshots.py [--out docs/screenshots]

Starts a daemon on a scratch data directory, fills it with one of everything (tests/showcase.py:
uploads with thumbnails, a session, a recorded stream, a camera image, a running job), and has
headless Chromium (tests/browser.py) photograph each page at desktop and phone width.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import Browser  # noqa: E402
from tests.helpers import Daemon  # noqa: E402
from tests.showcase import Showcase, populate, unpopulate  # noqa: E402

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844, "mobile": True}
# Long pages are photographed from a point of interest down, one screen tall (the rest is like it).
SCROLL_TO = {"docs": "#post_sessions_session_id_events", "docs-phone": "#post_sessions_session_id_events"}


def pages(show) -> list[tuple[str, str, dict]]:
    oid = show.video_id
    return [
        ("home", "/", DESKTOP),
        ("home-phone", "/", PHONE),
        ("library", "/library/", DESKTOP),
        ("object", f"/data/{oid[:2]}/{oid[2:]}/", DESKTOP),
        ("object-phone", f"/data/{oid[:2]}/{oid[2:]}/", PHONE),
        ("player", f"/data/{oid[:2]}/{oid[2:]}/Morning_ride.mp4?play", DESKTOP),
        ("data-tree", "/data/", DESKTOP),
        ("docs", "/docs", DESKTOP),
        ("docs-phone", "/docs", PHONE),
    ]


async def shoot(base: str, show, out: Path) -> list[Path]:
    written = []
    async with Browser() as browser:
        for name, path, size in pages(show):
            page = await browser.new_page(**size)
            await page.goto(base + path)
            # load every image now (lazy ones too) and wait for them and the player's first frame,
            # so the picture is what a person sees after scrolling
            await page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
            await page.wait_for("[...document.images].every(i => i.complete)", timeout=30)
            await page.wait_for("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)", timeout=30)
            target = out / f"{name}.png"
            if name in SCROLL_TO:
                await page.evaluate(f"document.querySelector({SCROLL_TO[name]!r}).scrollIntoView()")
                await page.screenshot(target, full_page=False)
            else:
                await page.screenshot(target)
            written.append(target)
            await page.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="storaged-screens-") as tmp:
        daemon = Daemon(Path(tmp) / "data", "--stream-segment-time", "2")
        daemon.data_dir.mkdir()
        daemon.start()
        show = Showcase()
        try:
            asyncio.run(populate(daemon.url, daemon.data_dir, Path(tmp) / "media", show))
            for path in asyncio.run(shoot(daemon.url, show, args.out)):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            asyncio.run(unpopulate(daemon.url, show))
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
