"""The camera family's section of the landing page: each camera's images of today, the newest shown.

Registered by the family's setup in ``Deps.landing_sections`` (storaged.web.landing renders them).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

from aiohttp import web

from storaged.camera import images
from storaged.web.landing import Section
from storaged.web.page import esc, link, plural, seg

ORDER = 40
CAMERA_IMAGES = 6


def cameras_section(cam: Any) -> Section:
    """``cam``: the family's camera service (its specs, directories and time zone)."""
    def known() -> list[int]:
        numbers = set(cam.specs)
        try:
            numbers |= {int(n) for n in os.listdir(cam.camera_root) if n.isdigit()}
        except FileNotFoundError:
            pass
        return sorted(numbers)

    async def cameras(request: web.Request) -> str:
        numbers = await asyncio.to_thread(known)
        if not numbers:
            return ""
        day = datetime.now(cam.tz).strftime("%Y%m%d")
        parts = ["<h2>Cameras</h2>"]
        for n in numbers:
            count, newest = await asyncio.to_thread(images.day_images, cam.camera_dir(n), day, CAMERA_IMAGES)
            folder = f"/data/camera/{n}/{day}/"
            head = f"<h3>Camera {n}</h3><p>{plural(count, 'image')} today"
            if count:
                head += f" · {link(folder, 'all of today')}"
            parts.append(head + f" · {link(f'/data/camera/{n}/', 'every day')}</p>")
            if newest:
                parts.append('<div class="gallery">' + "".join(
                    f'<a href="{esc(folder + seg(name))}?view"><img loading="lazy" alt="{esc(name)}" '
                    f'src="{esc(folder + seg(name))}"></a>' for name in newest) + "</div>")
        return "".join(parts)
    return cameras
