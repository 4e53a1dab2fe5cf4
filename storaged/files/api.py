"""Files family (specs/upload-and-analyse.md): /upload and /download."""

from __future__ import annotations

import asyncio
import mimetypes
from typing import AsyncIterator
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from storaged.api.expect import continue_unless
from storaged.api.keys import AFTER_PUT, BEFORE_DELETE, CONFIG, LAYOUT, OBJECTS, READ_THROUGH, Deps
from storaged.api.sendfile import BytesAnswer, send_file
from storaged.files import pins
from storaged.files.provider import FilesProvider
from storaged.errors import BadRequest, PayloadTooLarge
from storaged.store.layout import check_object_id
from storaged.store.objects import download_link

IMMUTABLE = "public, max-age=31536000, immutable"
routes = web.RouteTableDef()
PROVIDER = FilesProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes; register its provider.  Other families' hooks run via BEFORE_DELETE/AFTER_PUT."""
    deps.providers.append(PROVIDER(deps.layout, deps.config))
    app.add_routes(routes)


MAX_PAGE = 1000
LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                "description": "files per page (default: the setting list_page_size)"}


def page_limit(request: web.Request) -> int:
    default = request.app[CONFIG].list_page_size
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_PAGE}, not {raw!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer between 1 and {MAX_PAGE}, not {raw!r}")
    return limit


def content_disposition(disposition: str, name: str) -> str:
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _part_chunks(part: BodyPartReader, size: int) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(size):
        yield chunk


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    _, params = parse_content_disposition(header)
    return content_disposition_filename(params, "filename")


def _declared_too_large(request: web.Request) -> None:
    """A raw body whose Content-Length is over the limit can only fail: 413 before reading it."""
    store = request.app[OBJECTS]
    declared = request.content_length
    if declared is not None and declared > store.max_size and not request.content_type.startswith("multipart/"):
        raise PayloadTooLarge(f"upload larger than the limit of {store.max_size} bytes")


# Refuse from the head alone (token, Content-Length) before a client that asked
# `Expect: 100-continue` sends the body.
_EXPECT = continue_unless(_declared_too_large)


@routes.post("/upload", expect_handler=_EXPECT)
@routes.put("/upload", expect_handler=_EXPECT)
async def upload(request: web.Request) -> web.Response:
    """Store a file (raw body or multipart field `file`); answers its content id. PUT is the same
    upload (curl -T, rclone- and S3-style clients PUT)."""
    return await _upload(request, None)


@routes.put("/upload/{name}", expect_handler=_EXPECT)
async def upload_named(request: web.Request) -> web.Response:
    """Store a raw body under the name in the path (``curl -T clip.mp4 http://…/upload/``)."""
    return await _upload(request, request.match_info["name"])


async def _upload(request: web.Request, path_name: str | None) -> web.Response:
    store = request.app[OBJECTS]
    chunk = request.app[CONFIG].upload_chunk_size
    _declared_too_large(request)
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise BadRequest("multipart upload needs a field named 'file'")
            if isinstance(part, BodyPartReader) and part.name == "file":
                break
            await part.release()
        name = part.filename or path_name or request.query.get("name")
        ctype = part.headers.get("Content-Type")
        meta = await store.put(_part_chunks(part, chunk), name, ctype)
    else:
        name = (path_name or request.query.get("name")
                or _disposition_filename(request.headers.get("Content-Disposition")))
        meta = await store.put(request.content.iter_chunked(chunk), name, request.headers.get("Content-Type"))
    for hook in request.app[AFTER_PUT]:
        await hook(meta)
    return web.json_response({
        "file_id": meta["file_id"],
        "size": meta["size"],
        "name": meta["name"],
        "content_type": meta["content_type"],
        "deduplicated": meta["deduplicated"],
        "download": download_link(meta),
        # Only when the stored copy was found damaged and these bytes replaced it.
        **({"repaired": meta["repaired"]} if "repaired" in meta else {}),
    })


@routes.get("/upload")
async def list_uploads(request: web.Request) -> web.Response:
    """A page of stored files in id order."""
    page = await request.app[OBJECTS].list(page_limit(request), request.query.get("cursor"))
    return web.json_response(page)


@routes.get("/upload/{file_id}")
async def get_upload(request: web.Request) -> web.Response:
    """A stored file's meta and download link."""
    meta = await request.app[OBJECTS].meta(request.match_info["file_id"])
    pinned = await asyncio.to_thread(pins.is_pinned, request.app[LAYOUT], meta["file_id"])
    return web.json_response({**meta, "pinned": pinned, "download": download_link(meta)})


@routes.delete("/upload/{file_id}")
async def delete_upload(request: web.Request) -> web.Response:
    """Delete a stored file (its analyses are cancelled first)."""
    file_id = check_object_id(request.match_info["file_id"])
    for hook in request.app[BEFORE_DELETE]:
        await hook(file_id)
    await request.app[OBJECTS].delete(file_id)
    return web.json_response({"file_id": file_id, "deleted": True})


@routes.get("/download/{file_id}")
@routes.get("/download/{file_id}/{name}")
async def download(request: web.Request) -> web.StreamResponse:
    """The bytes of a stored file (Range, ETag = content hash); small ones from memory."""
    file_id = request.match_info["file_id"]
    objects = request.app[OBJECTS]
    disposition = "attachment" if "dl" in request.query else "inline"
    entry = objects.small.get(file_id)
    if entry is not None and disposition in entry.extra:
        return entry.extra[disposition].respond(request)  # a hit: no thread, no date formatted
    path, meta = await objects.open_path(file_id)
    headers = {
        "Cache-Control": IMMUTABLE,
        "Content-Disposition": content_disposition(disposition, meta["name"]),
    }
    if entry is None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        entry = await objects.small_object(file_id, meta, ctype)
    if entry is not None:
        answer = entry.extra[disposition] = BytesAnswer(entry.data, etag=file_id, mtime=entry.mtime,
                                                        content_type=entry.content_type, headers=headers)
        return answer.respond(request)
    if request.app[READ_THROUGH] and not await asyncio.to_thread(path.exists):
        # Evicted to the storage tier: served from there.
        for hook in request.app[READ_THROUGH]:
            response = await hook(request, file_id, meta, headers)
            if response is not None:
                return response
    return await send_file(request, path, etag=file_id, headers=headers)


@routes.put("/upload/{file_id}/pin")
async def pin(request: web.Request) -> web.Response:
    """Pin a stored file: the janitor never deletes it (an explicit DELETE /upload/<id> still does)."""
    oid = check_object_id(request.match_info["file_id"])
    await asyncio.to_thread(pins.pin_blocking, request.app[LAYOUT], oid, True)
    return web.json_response({"file_id": oid, "pinned": True})


@routes.delete("/upload/{file_id}/pin")
async def unpin(request: web.Request) -> web.Response:
    """Unpin a stored file: it expires again like any upload."""
    oid = check_object_id(request.match_info["file_id"])
    await asyncio.to_thread(pins.pin_blocking, request.app[LAYOUT], oid, False)
    return web.json_response({"file_id": oid, "pinned": False})
