"""Resumable uploads over HTTP: tus 1.0.0 at /files/ (creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination, concatenation), CORS for browsers,
and a JSON view of an upload at GET /files/<id>."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from email.utils import formatdate
from typing import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from storaged.web import openapi
from storaged.api.expect import continue_unless
from storaged.api.keys import OBJECTS, Deps
from storaged.errors import BadRequest, StoragedError
from storaged.store.objects import download_link
from storaged.uploads.layout import UPLOAD_ID_RE, check_upload_id
from storaged.uploads.provider import UploadsProvider
from storaged.uploads.service import (CHECKSUMS, EXTENSIONS, TUS_VERSION, Uploads, is_complete, is_final,
                                      metadata_view, parse_checksum)

log = logging.getLogger("storaged.uploads")

UPLOADS = web.AppKey("uploads", Uploads)
OFFSET_TYPE = "application/offset+octet-stream"
FILE_ID = "File-Id"  # the content id of a finished upload, as in POST /upload's answer
TUS_REQUEST_HEADERS = ("Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, "
                       "Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, "
                       "Upload-Defer-Length, Upload-Concat, Upload-Checksum")
TUS_RESPONSE_HEADERS = ("Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
                        "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
                        f"Upload-Concat, Upload-Expires, {FILE_ID}")
_NUMBER = re.compile(r"^[0-9]{1,19}$")
routes = web.RouteTableDef()


PROVIDER = UploadsProvider


def setup(app: web.Application, deps: Deps) -> None:
    """Add this family's routes and services to the app; register its provider."""
    config = deps.config
    app[UPLOADS] = Uploads(deps.layout, deps.objects, max_size=config.max_upload_size,
                           expiry=config.tus_expiry, chunk_size=config.upload_chunk_size)
    deps.providers.append(PROVIDER(deps.layout, config))
    deps.front.on_subtree("/files", TusHeaders())  # every answer under /files, errors and 401 too
    app.cleanup_ctx.append(_recover_ctx)
    app.add_routes(routes)
    for key, facts in OPERATION_FACTS.items():
        openapi.describe(key, **facts)


async def _recover_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[UPLOADS].recover(), name="uploads-recover")
    yield
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class TusHeaders:
    """Tus-Resumable on every answer under /files, 412 for another protocol version, CORS
    (the hook the one middleware runs for the /files subtree, storaged.api.middleware)."""

    def refuse(self, request: web.Request) -> web.StreamResponse | None:
        method = request.headers.get("X-HTTP-Method-Override", request.method).upper()
        # A URL that cannot name an upload is refused as such (400/404), whatever the protocol version.
        upload_id = request.match_info.get("upload_id")
        plausible = request.match_info.http_exception is None and (upload_id is None
                                                                   or UPLOAD_ID_RE.match(upload_id))
        if plausible and method in ("HEAD", "PATCH", "POST", "DELETE") \
                and request.headers.get("Tus-Resumable") != TUS_VERSION:
            return web.json_response({"error_message": f"unsupported Tus-Resumable "
                                      f"{request.headers.get('Tus-Resumable')!r}: this server speaks {TUS_VERSION}"},
                                     status=412, headers={"Tus-Version": TUS_VERSION})
        return None

    def decorate(self, request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers["Tus-Resumable"] = TUS_VERSION
        origin = request.headers.get("Origin")
        if origin:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Expose-Headers"] = TUS_RESPONSE_HEADERS
            if request.method == "OPTIONS":
                resp.headers["Access-Control-Allow-Methods"] = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"
                resp.headers["Access-Control-Allow-Headers"] = TUS_REQUEST_HEADERS
                resp.headers["Access-Control-Max-Age"] = "86400"


# -- header parsing ----------------------------------------------------------------------

def _number(request: web.Request, name: str, required: bool = False) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"{name} header missing")
        return None
    if not _NUMBER.match(raw.strip()):
        raise BadRequest(f"{name} must be a non-negative integer, not {raw!r}")
    return int(raw.strip())


def _creation_length(request: web.Request) -> int | None:
    length = _number(request, "Upload-Length")
    defer = request.headers.get("Upload-Defer-Length")
    if defer is not None and defer.strip() != "1":
        raise BadRequest(f"Upload-Defer-Length must be 1, not {defer!r}")
    if (length is None) == (defer is None):
        raise BadRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
    return length


def _partial_ids(concat: str) -> list[str]:
    ids = []
    for url in concat[len("final;"):].split():
        m = re.match(r"^/files/([^/]+)/?$", urlsplit(url).path)
        if m is None or not UPLOAD_ID_RE.match(m.group(1)):
            raise BadRequest(f"Upload-Concat: {url!r} is not an upload URL of this server (/files/<id>)")
        ids.append(m.group(1))
    return ids


def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The body as it arrives.  A stalled sender is cut by the connection guard (upload_min_rate): the
    read then fails, and the service keeps what arrived."""
    return request.content.iter_any()


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _state_headers(request: web.Request, info: dict) -> dict[str, str]:
    """What HEAD, PATCH and POST answer about an upload."""
    headers = {"Upload-Offset": str(info["offset"]), "Cache-Control": "no-store"}
    if info["length"] is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(info["length"])
    if info.get("metadata"):
        headers["Upload-Metadata"] = info["metadata"]
    if info.get("concat"):
        headers["Upload-Concat"] = info["concat"]
    expires = request.app[UPLOADS].expires(info)
    if expires is not None:
        headers["Upload-Expires"] = _http_date(expires)
    if info.get("file_id"):
        headers[FILE_ID] = info["file_id"]
    return headers


# -- routes ------------------------------------------------------------------------------

# A client sending `Expect: 100-continue` with a wrong token is refused before its body.
_EXPECT = continue_unless()


@routes.options("/files")
@routes.options("/files/")
@routes.options("/files/{upload_id}")
async def discover(request: web.Request) -> web.Response:
    """tus discovery: versions, extensions, the size limit and checksum algorithms."""
    return web.Response(status=204, headers={
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(request.app[UPLOADS].max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    })


@routes.post("/files", expect_handler=_EXPECT)
@routes.post("/files/", expect_handler=_EXPECT)
async def create(request: web.Request) -> web.Response:
    """Create an upload (tus creation); a body with Content-Type application/offset+octet-stream is its first bytes.

    Headers: `Upload-Length` or `Upload-Defer-Length: 1`, optional `Upload-Metadata`, `Upload-Concat`
    (`partial`, or `final;<url> <url>…` to concatenate finished partial uploads), `Upload-Checksum`.
    Answers 201 with `Location: /files/<id>`, `Upload-Offset`, `Upload-Expires`, and `File-Id` once complete.
    """
    uploads = request.app[UPLOADS]
    concat = request.headers.get("Upload-Concat")
    metadata = request.headers.get("Upload-Metadata")
    if concat is not None and concat != "partial":
        if not concat.startswith("final;"):
            raise BadRequest(f"Upload-Concat must be 'partial' or 'final;<urls>', not {concat!r}")
        if "Upload-Length" in request.headers or "Upload-Defer-Length" in request.headers:
            raise BadRequest("a final upload takes its length from its partial uploads: no Upload-Length")
        if request.body_exists:
            raise BadRequest("a final upload has no body")
        info = await uploads.create_final(_partial_ids(concat), metadata, concat)
    else:
        length = _creation_length(request)
        with_body = request.body_exists
        if with_body and request.content_type != OFFSET_TYPE:
            raise StoragedError(f"a creation body needs Content-Type {OFFSET_TYPE}", status=415)
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        if length is not None and request.content_length is not None and request.content_length > length:
            raise StoragedError(f"the body ({request.content_length} bytes) is longer than Upload-Length",
                                status=413)
        info = await uploads.create(length=length, metadata=metadata, concat=concat)
        if with_body:
            info = await uploads.append(info["id"], 0, _body(request), content_length=request.content_length,
                                        checksum=checksum)
    headers = _state_headers(request, info)
    del headers["Cache-Control"]
    if is_final(info):
        headers["Upload-Offset"] = str(info["offset"])
    headers["Location"] = f"/files/{info['id']}"
    return web.Response(status=201, headers=headers)


@routes.route("HEAD", "/files/{upload_id}")
async def head(request: web.Request) -> web.Response:
    """tus core: the upload's offset, length, metadata (and File-Id once complete)."""
    info = await request.app[UPLOADS].get(request.match_info["upload_id"])
    return web.Response(status=200, headers=_state_headers(request, info))


@routes.patch("/files/{upload_id}", expect_handler=_EXPECT)
async def patch(request: web.Request) -> web.Response:
    """tus core: append the body at `Upload-Offset` (Content-Type application/offset+octet-stream).

    Optional `Upload-Length` (a deferred length), `Upload-Checksum: sha1|sha256|md5 <base64>` (460 and
    the chunk discarded on a mismatch). Answers 204 with the new `Upload-Offset`, and `File-Id` when the
    upload is complete (the bytes are then a stored file, as after `POST /upload`).
    """
    upload_id = check_upload_id(request.match_info["upload_id"])
    if request.content_type != OFFSET_TYPE:
        raise StoragedError(f"PATCH needs Content-Type {OFFSET_TYPE}", status=415)
    offset = _number(request, "Upload-Offset", required=True)
    new_length = _number(request, "Upload-Length")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    info = await request.app[UPLOADS].append(upload_id, offset, _body(request),
                                             content_length=request.content_length, new_length=new_length,
                                             checksum=checksum)
    headers = _state_headers(request, info)
    del headers["Cache-Control"]
    return web.Response(status=204, headers=headers)


@routes.delete("/files/{upload_id}")
async def terminate(request: web.Request) -> web.Response:
    """tus termination: forget the upload and its bytes so far (a finished upload's stored file stays)."""
    await request.app[UPLOADS].terminate(request.match_info["upload_id"])
    return web.Response(status=204)


@routes.post("/files/{upload_id}", expect_handler=_EXPECT)
async def method_override(request: web.Request) -> web.StreamResponse:
    """POST with `X-HTTP-Method-Override: PATCH|DELETE|HEAD`, for clients that cannot send those methods."""
    check_upload_id(request.match_info["upload_id"])
    override = request.headers.get("X-HTTP-Method-Override", "").upper()
    handler = {"PATCH": patch, "DELETE": terminate, "HEAD": head}.get(override)
    if handler is None:
        raise StoragedError("POST on an upload needs X-HTTP-Method-Override: PATCH, DELETE or HEAD",
                            status=405)
    return await handler(request)


@routes.get("/files/{upload_id}", allow_head=False)
async def view(request: web.Request) -> web.Response:
    """An upload as JSON: offset, length, metadata, expiry, and `file_id`/`download` once complete."""
    uploads = request.app[UPLOADS]
    info = await uploads.get(request.match_info["upload_id"])
    expires = uploads.expires(info)
    body = {
        "id": info["id"],
        "offset": info["offset"],
        "length": info["length"],
        "complete": bool(info.get("file_id")) or (is_complete(info) and info.get("concat") == "partial"),
        "metadata": metadata_view(info.get("metadata")),
        "concat": info.get("concat"),
        "created": info["created"],
        "updated": info["updated"],
        "expires": _http_date(expires) if expires is not None else None,
        "file_id": info.get("file_id"),
    }
    if info.get("file_id"):
        try:
            body["download"] = download_link(await request.app[OBJECTS].meta(info["file_id"]))
        except StoragedError:
            body["download"] = None  # the stored file was deleted since
    return web.json_response(body)


_ID = {"type": "string", "description": "upload id: 32 lowercase hex characters"}
_TUS_ERRORS = {"400": "a malformed header or id (the message names it)", "404": "unknown upload",
               "410": "the upload expired", "412": "no or another Tus-Resumable (this server speaks 1.0.0)",
               "423": "another request is writing this upload", "507": "the data filesystem is full"}
OPERATION_FACTS = {
    "POST /files": {"content": {OFFSET_TYPE: {"type": "string", "format": "binary"}},
                    "responses": {"201": openapi.empty("created: Location, Upload-Offset, Upload-Expires"),
                                  "413": "Upload-Length over Tus-Max-Size", "415": "a body of another type",
                                  **{k: v for k, v in _TUS_ERRORS.items() if k not in ("410", "423")},
                                  "404": "a partial upload named in Upload-Concat is unknown",
                                  "410": "a partial upload named in Upload-Concat expired",
                                  "423": "a partial upload is being written"}},
    "PATCH /files/{upload_id}": {
        "path": {"upload_id": _ID}, "content": {OFFSET_TYPE: {"type": "string", "format": "binary"}},
        "responses": {"204": "applied: the new Upload-Offset (File-Id when complete)",
                      "403": "a final concatenated upload",
                      "409": "Upload-Offset is not the upload's offset",
                      "413": "the body goes past Upload-Length or Tus-Max-Size", "415": "not offset+octet-stream",
                      "460": "Upload-Checksum mismatch: the chunk was discarded", **_TUS_ERRORS}},
    "DELETE /files/{upload_id}": {"path": {"upload_id": _ID},
                                  "responses": {"204": "terminated", **_TUS_ERRORS}},
    "POST /files/{upload_id}": {
        "path": {"upload_id": _ID}, "content": {OFFSET_TYPE: {"type": "string", "format": "binary"}},
        "responses": {"200": openapi.empty("HEAD's answer (in headers)"), "204": "PATCH's or DELETE's answer",
                      "403": "a final upload",
                      "405": "no or another X-HTTP-Method-Override",
                      "409": "Upload-Offset mismatch", "413": "past the upload's end", "415": "wrong type",
                      "460": "checksum mismatch", **_TUS_ERRORS}},
    "GET /files/{upload_id}": {"path": {"upload_id": _ID},
                               "responses": {"200": openapi.answer("the upload, for people", openapi.obj(
                                   ("id", "offset", "length", "complete"), id={"type": "string"},
                                   offset={"type": "integer", "minimum": 0}, length={"type": ["integer", "null"]},
                                   complete={"type": "boolean"}, metadata={"type": "object"},
                                   concat={"type": ["string", "null"]}, created={"type": ["string", "null"]},
                                   updated={"type": ["string", "null"]}, expires={"type": ["string", "null"]},
                                   file_id={"type": ["string", "null"]}, download={"type": ["string", "null"]})),
                                             "400": "malformed upload id", "404": "unknown upload",
                                             "410": "the upload expired"}},
}
OPERATION_FACTS["POST /files/"] = OPERATION_FACTS["POST /files"]
