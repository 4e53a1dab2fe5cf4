"""Direct browsing of the data tree: GET /data/<path>.

Directories answer an HTML page (or JSON for ``Accept: application/json``);
files are served by storaged.api.sendfile (sendfile, Range, conditional requests).  A video file
links to a small page that plays it (``?play``).

Containment: the request path is refused when it holds a NUL, a backslash or
a ``..`` segment, and the real path (symlinks resolved) must stay inside the
real data root, so a symlink pointing outside answers 404 as if absent.
"""

from __future__ import annotations

import asyncio
import html
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from storaged.api.keys import LAYOUT
from storaged.api.sendfile import send_file
from storaged.errors import BadRequest, NotFound

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".mts", ".m3u8"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp"}
routes = web.RouteTableDef()


def resolve_inside(root: Path, rel: str) -> Path:
    """The real path of ``rel`` under ``root``; BadRequest/NotFound when it would leave it."""
    if "\x00" in rel or "\\" in rel:
        raise BadRequest("invalid path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BadRequest("invalid path: '..' is not allowed")
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, *parts))
    if candidate != real_root and not candidate.startswith(real_root + os.sep):
        raise NotFound("not found")
    if not os.path.exists(candidate) or os.path.islink(candidate):
        # Missing, dangling, or a symlink loop realpath could not resolve.
        raise NotFound("not found")
    return Path(candidate)


def list_dir(path: Path) -> list[dict]:
    entries = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                st = entry.stat(follow_symlinks=False)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            entries.append({
                "name": entry.name,
                "type": kind,
                "symlink": entry.is_symlink(),
                "size": st.st_size if kind == "file" else None,
                "mtime": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(timespec="seconds")
                .replace("+00:00", "Z"),
            })
    entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
    return entries


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td{{padding:2px 12px}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}}video{{max-width:100%}}</style>
</head><body><h1>{title}</h1>{body}</body></html>
"""


def render_listing(url_path: str, entries: list[dict]) -> str:
    base = url_path if url_path.endswith("/") else url_path + "/"
    rows = []
    if base != "/data/":
        rows.append('<tr><td><a href="../">../</a></td><td></td><td></td></tr>')
    for e in entries:
        name = e["name"] + ("/" if e["type"] == "dir" else "")
        href = quote(e["name"]) + ("/" if e["type"] == "dir" else "")
        extra = ""
        ext = os.path.splitext(e["name"])[1].lower()
        if e["type"] == "file" and ext in VIDEO_EXTS:
            extra = f' (<a href="{html.escape(href)}?play">play</a>)'
        elif e["type"] == "file" and ext in IMAGE_EXTS:
            extra = f' (<a href="{html.escape(href)}?view">view</a>)'
        rows.append(
            f'<tr><td><a href="{html.escape(href)}">{html.escape(name)}</a>{extra}</td>'
            f'<td class="n">{human_size(e["size"])}</td><td>{html.escape(e["mtime"])}</td></tr>')
    body = "<table><tr><th>name</th><th>size</th><th>modified</th></tr>" + "".join(rows) + "</table>"
    return PAGE.format(title=html.escape(url_path), body=body)


def render_player(url_path: str, name: str, video: bool) -> str:
    src = html.escape(quote(name))
    # Browsers only autoplay muted video; controls let a person unmute.
    tag = (f'<video controls autoplay muted playsinline preload="metadata" src="{src}"></video>' if video
           else f'<img src="{src}" alt="{html.escape(name)}" style="max-width:100%">')
    body = f'{tag}<p><a href="./">back</a> · <a href="{src}">download</a></p>'
    return PAGE.format(title=html.escape(url_path), body=body)


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def serve_tree(request: web.Request, root: Path, rel: str) -> web.StreamResponse:
    """Serve ``rel`` under ``root`` as a listing, a player page or the file (shared with /shared)."""
    path = await asyncio.to_thread(resolve_inside, root, rel)
    if await asyncio.to_thread(path.is_dir):
        if not request.path.endswith("/"):
            raise web.HTTPMovedPermanently(location=quote(request.path) + "/")
        entries = await asyncio.to_thread(list_dir, path)
        if wants_json(request):
            return web.json_response({"path": request.path, "entries": entries})
        return web.Response(text=render_listing(request.path, entries), content_type="text/html")
    if "play" in request.query or "view" in request.query:
        ext = path.suffix.lower()
        return web.Response(text=render_player(request.path, request.path.rsplit("/", 1)[-1],
                                               ext in VIDEO_EXTS), content_type="text/html")
    return await send_file(request, path)


@routes.get("/data")
async def data_root(request: web.Request) -> web.StreamResponse:
    """Redirect to /data/."""
    raise web.HTTPMovedPermanently(location="/data/")


@routes.get("/data/{path:.*}")
async def browse(request: web.Request) -> web.StreamResponse:
    """Browse the data tree: HTML/JSON listing, player page, or the file with Range."""
    return await serve_tree(request, request.app[LAYOUT].root, request.match_info["path"])
