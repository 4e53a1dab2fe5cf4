"""Serving a file over HTTP as RFC 9110 says — the one copy every file route uses
(/download, analysis outputs, /data, /shared and whatever they hold: recordings, captures).

Protocol of one request (``await send_file(request, path, ...)`` from a handler):

1. The file is opened and ``fstat``-ed in a thread; what is sent is that open
   file, so a rename over the path meanwhile changes nothing mid-response.
   A missing or non-regular file is a NotFound (rendered by the middleware).
2. Validators: the ``ETag`` is the caller's (the content hash of a stored
   object) or ``"<mtime_ns>-<size>"``; ``Last-Modified`` is the mtime (whole
   seconds, as HTTP dates are).
3. Preconditions in RFC 9110 §13.2.2 order: ``If-Match`` (strong comparison)
   else ``If-Unmodified-Since`` -> 412; ``If-None-Match`` (weak comparison)
   else ``If-Modified-Since`` -> 304 for GET/HEAD (412 for other methods).
4. ``Range`` (GET only; a unit other than ``bytes`` or a malformed set is
   ignored: 200 whole). ``If-Range`` with an entity tag must match strongly,
   with a date must equal ``Last-Modified`` exactly; otherwise the range is
   ignored and the whole file is sent (200), never a range of a changed file.
   No satisfiable range -> 416 with ``Content-Range: bytes */size``. One range
   -> 206 with ``Content-Range``. Several -> 206 ``multipart/byteranges``
   in the order asked; overlapping ones, or more than ``MAX_RANGES``, are
   merged in file order first (RFC 9110 §14.2 lets a server coalesce), so a
   request cannot make the answer larger than about the file.
5. HEAD answers the headers a plain GET would (200, the whole length), without a body: RFC 9110
   defines range handling for GET only, so a HEAD ignores ``Range``.
6. The bytes go with ``loop.sendfile`` (zero copy). The response's byte count
   (``%b`` of the access log, headers included as aiohttp counts them) adds
   what sendfile sent, which the stream writer never sees.

Content already in memory (small immutable objects) is answered the same way by
:class:`BytesAnswer`, whose whole-body headers are worked out once: a request
with none of the headers steps 3 and 4 read (``CONDITIONAL``) gets them as they
are, without a date formatted or a header parsed.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
import re
import secrets
import stat
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Mapping

from aiohttp import web
from aiohttp.helpers import ETAG_ANY, ETag

from storaged.errors import NotFound

MAX_RANGES = 16
CHUNK = 256 * 1024
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def _open_regular(path: Path) -> tuple[io.BufferedReader, os.stat_result]:
    try:
        fobj = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise NotFound("not found") from None
    st = os.fstat(fobj.fileno())
    if not stat.S_ISREG(st.st_mode):
        fobj.close()
        raise NotFound("not found")
    return fobj, st


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ``(first, last)`` byte ranges of a ``Range`` header, in the order asked.

    None: ignore the header (not ``bytes``, malformed, or an empty file).
    []: a valid set of which nothing is satisfiable (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip() or size == 0:
        return None
    out = []
    for part in spec.split(","):
        if not part.strip():
            continue  # RFC 9110 list syntax allows empty elements
        m = _RANGE_SPEC.match(part)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        first, last = m.group(1), m.group(2)
        if not first:  # suffix: the last N bytes
            n = int(last)
            if n > 0:
                out.append((max(0, size - n), size - 1))
            continue
        a = int(first)
        if last and int(last) < a:
            return None  # an invalid spec makes the whole set invalid
        if a < size:
            out.append((a, min(int(last) if last else size - 1, size - 1)))
    return out


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _overlapping(ranges: list[tuple[int, int]]) -> bool:
    ordered = sorted(ranges)
    return any(ordered[i][0] <= ordered[i - 1][1] for i in range(1, len(ordered)))


def _strong_match(tags: tuple[ETag, ...], etag: str) -> bool:
    return any(t.value == ETAG_ANY or (not t.is_weak and t.value == etag) for t in tags)


def _weak_match(tags: tuple[ETag, ...], etag: str) -> bool:
    return any(t.value in (ETAG_ANY, etag) for t in tags)


def _if_range_holds(value: str, etag: str, mtime: int) -> bool:
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == f'"{etag}"'  # strong comparison: a weak tag never matches
    try:
        return int(parsedate_to_datetime(value).timestamp()) == mtime
    except (TypeError, ValueError, IndexError):
        return False


async def send_file(request: web.Request, path: Path | str, *, etag: str | None = None,
                    content_type: str | None = None, headers: Mapping[str, str] | None = None,
                    ) -> web.StreamResponse:
    """The response for ``path`` (see the module's protocol)."""
    fobj, st = await asyncio.to_thread(_open_regular, Path(path))
    try:
        return _respond(request, Path(path), fobj, st, etag, content_type, headers)
    except BaseException:
        fobj.close()
        raise


def _respond(request: web.Request, path: Path, fobj, st: os.stat_result, etag: str | None,
             content_type: str | None, headers: Mapping[str, str] | None) -> web.StreamResponse:
    size = st.st_size
    etag = etag or f"{st.st_mtime_ns:x}-{size:x}"
    ctype = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    decided = _decide(request, etag, int(st.st_mtime), size, headers)
    if isinstance(decided, web.Response):
        fobj.close()
        return decided
    base, ranges = decided
    return _FileBody(fobj, size, ctype, base, ranges)


# The request headers that can make an answer other than 200 with the whole body (If-Range only
# matters with Range).
CONDITIONAL = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Range")


def send_bytes(request: web.Request, data: bytes, *, etag: str, mtime: int, content_type: str,
               headers: Mapping[str, str] | None = None) -> web.Response:
    """The same answer as :func:`send_file` for content already in memory (small immutable objects)."""
    decided = _decide(request, etag, mtime, len(data), headers)
    if isinstance(decided, web.Response):
        return decided
    base, ranges = decided
    if not ranges:  # (aiohttp sends no body for HEAD, and keeps the length)
        return web.Response(body=data, headers={**base, "Content-Type": content_type})
    shape = _FileBody(None, len(data), content_type, base, ranges)
    headers = {k: v for k, v in shape.headers.items() if k != "Content-Length"}
    return web.Response(status=206, body=shape.render(data), headers=headers)


class BytesAnswer:
    """:func:`send_bytes` for bytes that never change, with the plain 200's headers worked out once."""

    __slots__ = ("data", "etag", "mtime", "content_type", "headers", "whole")

    def __init__(self, data: bytes, *, etag: str, mtime: int, content_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.data, self.etag, self.mtime, self.content_type, self.headers = data, etag, mtime, content_type, headers
        self.whole = {**_validators(etag, mtime, headers), "Content-Type": content_type}

    def respond(self, request: web.Request) -> web.Response:
        present = request.headers
        for name in CONDITIONAL:
            if name in present:
                return send_bytes(request, self.data, etag=self.etag, mtime=self.mtime,
                                  content_type=self.content_type, headers=self.headers)
        return web.Response(body=self.data, headers=self.whole)


def _validators(etag: str, mtime: int, headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's headers and the validators every answer about the file carries."""
    return {**(headers or {}), "ETag": f'"{etag}"', "Last-Modified": formatdate(mtime, usegmt=True),
            "Accept-Ranges": "bytes"}


def _decide(request: web.Request, etag: str, mtime: int, size: int, headers: Mapping[str, str] | None
            ) -> "web.Response | tuple[dict, list[tuple[int, int]] | None]":
    """Preconditions and ranges: a bodiless answer, or (headers, ranges to send; None = all)."""
    base = _validators(etag, mtime, headers)
    safe = request.method in ("GET", "HEAD")

    def bodiless(status: int, **extra: str) -> web.Response:
        headers = {**base, **extra}
        if status != 304:
            # A 412/416 answers this request's conditions, not the file: no cache may reuse it.
            headers = {k: v for k, v in headers.items() if k.lower() != "cache-control"}
            headers["Cache-Control"] = "no-store"
        return web.Response(status=status, headers=headers)

    if request.if_match is not None:
        if not _strong_match(request.if_match, etag):
            return bodiless(412)
    elif (since := request.if_unmodified_since) is not None and mtime > since.timestamp():
        return bodiless(412)
    if request.if_none_match is not None:
        if _weak_match(request.if_none_match, etag):
            return bodiless(304) if safe else bodiless(412)
    elif safe and (since := request.if_modified_since) is not None and mtime <= since.timestamp():
        return bodiless(304)

    ranges = None
    if request.method == "GET" and "Range" in request.headers:  # RFC 9110 §14.2: range handling is for GET only
        if_range = request.headers.get("If-Range")
        if if_range is None or _if_range_holds(if_range, etag, mtime):
            ranges = parse_ranges(request.headers["Range"], size)
    if ranges == []:
        return bodiless(416, **{"Content-Range": f"bytes */{size}"})
    if ranges and (len(ranges) > MAX_RANGES or _overlapping(ranges)):
        ranges = _coalesce(ranges)
    return base, ranges


class _FileBody(web.StreamResponse):
    """The 200/206 body of an open file; closes it once sent (or not)."""

    def __init__(self, fobj, size: int, ctype: str, headers: dict, ranges: list[tuple[int, int]] | None) -> None:
        super().__init__(status=200 if not ranges else 206, headers=headers)
        self._fobj = fobj
        self._parts: list[tuple[bytes, int, int]] = []  # (preamble, offset, count)
        self._trailer = b""
        if not ranges:
            self.content_type = ctype
            self._parts.append((b"", 0, size))
        elif len(ranges) == 1:
            a, b = ranges[0]
            self.content_type = ctype
            self.headers["Content-Range"] = f"bytes {a}-{b}/{size}"
            self._parts.append((b"", a, b - a + 1))
        else:
            boundary = secrets.token_hex(16)
            self.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
            for i, (a, b) in enumerate(ranges):
                preamble = (f"{'' if i == 0 else chr(13) + chr(10)}--{boundary}\r\nContent-Type: {ctype}\r\n"
                            f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n").encode()
                self._parts.append((preamble, a, b - a + 1))
            self._trailer = f"\r\n--{boundary}--\r\n".encode()
        self.content_length = sum(len(p) + n for p, _, n in self._parts) + len(self._trailer)

    def render(self, data: bytes) -> bytes:
        """The whole body, from ``data`` (the file's bytes) instead of the open file."""
        out = [p + data[offset:offset + count] for p, offset, count in self._parts]
        return b"".join(out) + self._trailer

    async def prepare(self, request: web.BaseRequest):
        if self.prepared:
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or writer is None:
                return writer
            loop = asyncio.get_running_loop()
            for preamble, offset, count in self._parts:
                if preamble:
                    await writer.write(preamble)
                    await writer.drain()
                if count:
                    await self._send_span(loop, request, writer, offset, count)
            await self.write_eof(self._trailer)
            return writer
        finally:
            self._fobj.close()

    async def _send_span(self, loop, request, writer, offset: int, count: int) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost")
        try:
            sent = await loop.sendfile(transport, self._fobj, offset, count)
        except NotImplementedError:  # e.g. TLS: copy through the writer (it counts itself)
            self._fobj.seek(offset)
            while count > 0:
                chunk = await asyncio.to_thread(self._fobj.read, min(CHUNK, count))
                if not chunk:
                    break
                await writer.write(chunk)
                count -= len(chunk)
            return
        # sendfile bypasses the writer: count the bytes where the access log reads them.
        writer.output_size += sent
        if writer.length is not None:
            writer.length = max(0, writer.length - sent)
