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
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from storaged.api.keys import LAYOUT, OBJECTS, READ_THROUGH
from storaged.api.sendfile import send_file
from storaged.errors import BadRequest, NotFound
from storaged.store.objects import THE_FILE
from storaged.web.landing import IMAGE_EXTS, VIDEO_EXTS, download_url, player_url
from storaged.web.page import esc, human_size, link, page, table

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


OBJECT_DIR_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{62})$")
FANOUT_RE = re.compile(r"^[0-9a-f]{2}$")

# What a person needs before the hash tree: where files are found by name.
DATA_ROOT_NOTE = (f'<p>This is the raw tree, by content hash (for tools). Files by name: '
                  f'{link("/library/", "Library")}; streams, sessions, cameras and jobs: {link("/", "Home")}.</p>')


def render_listing(url_path: str, mount: str, entries: list[dict], *, intro: str = "",
                   names: dict[str, str] | None = None, heading: str | None = None) -> str:
    """A directory page; ``names`` maps entry names to a label shown beside them (an object's original name)."""
    base = url_path if url_path.endswith("/") else url_path + "/"
    names = names or {}
    rows = []
    if base != mount:
        rows.append([link("../", "../"), "", ""])
    for e in entries:
        is_dir = e["type"] == "dir"
        href = quote(e["name"]) + ("/" if is_dir else "")
        cell = link(href, e["name"] + ("/" if is_dir else ""))
        if e["name"] in names:
            cell = f'<strong>{esc(names[e["name"]])}</strong><br>{cell}'
        ext = os.path.splitext(e["name"])[1].lower()
        if not is_dir and ext in VIDEO_EXTS:
            cell += f' ({link(href + "?play", "play")})'
        elif not is_dir and ext in IMAGE_EXTS:
            cell += f' ({link(href + "?view", "view")})'
        rows.append([cell, human_size(e["size"]), esc(e["mtime"])])
    body = intro + table(["name", "size", "modified"], rows, {1})
    return page(url_path, body, heading=heading)


def render_player(url_path: str, name: str, video: bool, heading: str | None = None) -> str:
    src = esc(quote(name))
    # Browsers only autoplay muted video; controls let a person unmute.
    tag = (f'<video controls autoplay muted playsinline preload="metadata" src="{src}"></video>' if video
           else f'<img class="full" src="{src}" alt="{esc(name)}">')
    body = f'{tag}<p><a href="./">back</a> · <a href="{src}">download</a></p>'
    return page(url_path, body, heading=heading or name)


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


Describe = Callable[[web.Request, str, list[dict]], Awaitable[dict[str, Any]]]


async def serve_tree(request: web.Request, root: Path, rel: str, describe: Describe | None = None) -> web.StreamResponse:
    """Serve ``rel`` under ``root`` as a listing, a player page or the file (shared with /shared).

    ``describe(request, rel, entries)`` may add to a directory page: ``intro`` (HTML above the
    listing), ``names`` (labels beside entries) and ``heading`` (text).
    """
    path = await asyncio.to_thread(resolve_inside, root, rel)
    mount = "/" + request.path.lstrip("/").split("/", 1)[0] + "/"
    if await asyncio.to_thread(path.is_dir):
        if not request.path.endswith("/"):
            raise web.HTTPMovedPermanently(location=quote(request.path) + "/")
        entries = await asyncio.to_thread(list_dir, path)
        if wants_json(request):
            return web.json_response({"path": request.path, "entries": entries})
        extra = await describe(request, rel.strip("/"), entries) if describe else {}
        return web.Response(text=render_listing(request.path, mount, entries, **extra), content_type="text/html")
    if "play" in request.query or "view" in request.query:
        ext = path.suffix.lower()
        name = request.path.rsplit("/", 1)[-1]
        # A stored file's player is headed by its original name, like its directory page.
        parent = rel.strip("/").rsplit("/", 1)[0] if "/" in rel.strip("/") else ""
        extra = await describe(request, parent, []) if describe and OBJECT_DIR_RE.match(parent) else {}
        return web.Response(text=render_player(request.path, name, ext in VIDEO_EXTS, extra.get("heading")),
                            content_type="text/html")
    return await send_file(request, path)


async def describe_data(request: web.Request, rel: str, entries: list[dict]) -> dict[str, Any]:
    """Names first: an object directory shows its original name, a fan-out folder its objects' names."""
    objects = request.app[OBJECTS]
    if rel == "":
        return {"intro": DATA_ROOT_NOTE}
    if m := OBJECT_DIR_RE.match(rel):
        file_id = m.group(1) + m.group(2)
        try:
            meta = await objects.meta(file_id)
        except (NotFound, ValueError):
            return {}
        actions = [link(url, "play")] if (url := player_url(meta)) else []
        actions.append(link(download_url(meta), "download"))
        actions.append(link(f"/upload/{file_id}", "meta (JSON)"))
        actions.append(link(f"/results/{file_id}", "analyses (JSON)"))
        intro = (f'<div class="facts"><span>size</span><span>{human_size(meta.get("size"))}</span>'
                 f'<span>uploaded</span><span>{esc(meta.get("created"))}</span>'
                 f'<span>type</span><span>{esc(meta.get("content_type"))}</span>'
                 f'<span>id</span><span><code>{esc(file_id)}</code></span></div>'
                 f'<p>{" · ".join(actions)}</p>')
        return {"intro": intro, "heading": meta.get("name") or meta.get("stored_name") or file_id}
    if FANOUT_RE.match(rel):
        subs = [e["name"] for e in entries if e["type"] == "dir" and re.fullmatch(r"[0-9a-f]{62}", e["name"])]
        metas = await asyncio.gather(*(objects.meta(rel + s) for s in subs), return_exceptions=True)
        return {"names": {s: m.get("name") for s, m in zip(subs, metas) if isinstance(m, dict) and m.get("name")}}
    return {}


def setup(app: web.Application, deps: object = None) -> None:
    app.add_routes(routes)


@routes.get("/data")
async def data_root(request: web.Request) -> web.StreamResponse:
    """Redirect to /data/."""
    raise web.HTTPMovedPermanently(location="/data/")


@routes.get("/data/{path:.*}")
async def browse(request: web.Request) -> web.StreamResponse:
    """Browse the data tree: HTML/JSON listing, player page, or the file with Range."""
    rel = request.match_info["path"]
    try:
        return await serve_tree(request, request.app[LAYOUT].root, rel, describe_data)
    except NotFound:
        response = await _evicted_bytes(request, rel)
        if response is None:
            raise
        return response


_OBJECT_FILE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{62})/([^/]+)")


async def _evicted_bytes(request: web.Request, rel: str) -> web.StreamResponse | None:
    """An object's bytes (by their name or ``the_file``) evicted to the storage tier: served from there."""
    match = _OBJECT_FILE.fullmatch(rel)
    if match is None or not request.app[READ_THROUGH]:
        return None
    oid = match.group(1) + match.group(2)
    try:
        meta = await request.app[OBJECTS].meta(oid)
    except NotFound:
        return None
    if match.group(3) not in (meta["stored_name"], THE_FILE) or "play" in request.query or "view" in request.query:
        return None
    for hook in request.app[READ_THROUGH]:
        response = await hook(request, oid, meta, {})
        if response is not None:
            return response
    return None
