"""tus uploads in progress: create, append, concatenate, finish, terminate, expire.

Protocol
--------
*An upload* is the directory ``<data>/uploads/<id>/`` (see layout.py) holding
``info.json`` and ``data``.  ``info.json`` says everything about it::

    {"id", "length" (null while deferred), "offset", "metadata" (the Upload-Metadata
     header as sent, or null), "concat" (null, "partial" or the "final;…" header),
     "created", "updated", "sha256" (once offset == length), "file_id" and
     "completed" (once published as an object)}

It is built complete in ``<data>/tmp`` and renamed into place: a reader sees
the whole upload or none.

*The offset is never ahead of the disk.*  ``offset`` in info.json is the
committed offset: bytes ``[0, offset)`` of ``data`` are fsynced before an
info.json naming that offset is written (temp file, fsync, rename, fsync of the
directory).  After a crash ``data`` may be longer; the next PATCH truncates it
to the offset.  HEAD answers info.json's offset, so a client resuming after a
daemon SIGKILL or a power cut continues from bytes that are really there.

*Commits.*  A PATCH commits when its body ends; when the connection breaks
(what arrived is kept, as the protocol asks); and every ``CHECKPOINT_BYTES``
or ``CHECKPOINT_SECONDS`` in between, so a daemon killed in the middle of one
long PATCH loses little.  A PATCH with ``Upload-Checksum`` commits only once,
whole and verified.  A checksum mismatch (460), a body past the length (413)
or a full disk (507) rolls ``data`` back to the last commit.

*Running hash.*  The SHA-256 of ``data[0:offset]`` is kept in memory per
upload, tagged with the offset it stands for; a PATCH reuses it when the
offsets match and otherwise recomputes it by reading ``data`` once (the first
PATCH after a daemon restart).  The commit that reaches the length records
the digest as ``sha256``: completion never re-reads the bytes.

*Completion.*  Once ``offset == length`` (and the upload is not a partial),
``data`` is published through ``ObjectStore.publish`` -- the same path as
``POST /upload``: same meta, dedupe, object lock -- and info.json gets
``file_id``.  A crash in between leaves ``sha256`` without ``file_id``;
start-up (and the next request on the upload, HEAD and GET included)
publishes it again.  A final concatenation is placed with ``sha256`` and
published next, so a reader can meet that state without a crash too.

*Locks.*  One lock per upload (``locks/uploads/<id>.lock``): PATCH, DELETE,
concatenation, publishing and the janitor take it; HEAD and GET read info.json
without it (unless they find it finished but unpublished: they publish it).
A second writer waits up to ``LOCK_WAIT`` seconds, then gets 423: bytes of
two PATCHes are never interleaved.  Order: the upload's lock,
then the object's (in publish).  A final concatenation takes its partials'
locks one at a time, never two at once.

*Expiry.*  An unfinished upload expires ``tus_expiry`` after its last commit
(``Upload-Expires``; 410 after that); a finished one's record is kept
``tus_expiry`` after it finished.  The janitor removes both
(:func:`expired_uploads`, :func:`remove_expired`) under the upload's lock,
without waiting for it.

*What a crash leaves.*  A ``data`` longer than the offset (truncated on the
next PATCH), a staging directory in ``<data>/tmp`` (swept at start-up), or a
finished upload not yet published (published at start-up).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterable, Iterator

from filelock import Timeout

from storaged.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, StoragedError
from storaged.store.atomic import (TMP_SUFFIX, async_lock, fsync_dir, raise_storage_fault, read_json, sync_lock, trash,
                                   write_json)
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, now_iso
from storaged.uploads.layout import DATA, INFO, UploadLayout, check_upload_id, new_upload_id

log = logging.getLogger("storaged.uploads")

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
              "termination", "concatenation")
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
CHECKPOINT_BYTES = 64 * 1024 * 1024
CHECKPOINT_SECONDS = 5.0
LOCK_WAIT = 5.0
COPY_CHUNK = 4 * 1024 * 1024


class Forbidden(StoragedError):
    status = 403


class Gone(StoragedError):
    status = 410


class Locked(StoragedError):
    status = 423


class ChecksumMismatch(StoragedError):
    status = 460


# -- header values ---------------------------------------------------------------------

def parse_metadata(raw: str | None) -> dict[str, bytes]:
    """``Upload-Metadata``: ``key base64,key2 base64,key3``; keys unique, printable ASCII."""
    if raw is None:
        return {}
    out: dict[str, bytes] = {}
    if not raw.strip():
        raise BadRequest("Upload-Metadata: empty")
    for pair in raw.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key or any(not 0x21 <= ord(c) <= 0x7E for c in key):
            raise BadRequest(f"Upload-Metadata: bad key {key!r} (printable ASCII, no spaces or commas)")
        if key in out:
            raise BadRequest(f"Upload-Metadata: duplicate key {key!r}")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata: the value of {key!r} is not base64") from None
    return out


def metadata_view(raw: str | None) -> dict[str, str]:
    """Metadata as text, for people (values that are not UTF-8 keep their base64)."""
    view = {}
    for key, value in parse_metadata(raw).items():
        try:
            view[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            view[key] = "base64:" + base64.b64encode(value).decode()
    return view


def parse_checksum(raw: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``."""
    if raw is None:
        return None
    algorithm, _, value = raw.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise BadRequest(f"Upload-Checksum: unsupported algorithm {algorithm!r} "
                         f"(supported: {', '.join(CHECKSUMS)})")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum: the checksum is not base64") from None
    if len(digest) != CHECKSUMS[algorithm]().digest_size:
        raise BadRequest(f"Upload-Checksum: a {algorithm} checksum has {CHECKSUMS[algorithm]().digest_size} bytes")
    return algorithm, digest


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def is_complete(info: dict[str, Any]) -> bool:
    return info["length"] is not None and info["offset"] == info["length"]


def is_partial(info: dict[str, Any]) -> bool:
    return info.get("concat") == "partial"


def is_final(info: dict[str, Any]) -> bool:
    return str(info.get("concat") or "").startswith("final;")


def expires_at(info: dict[str, Any], expiry: float) -> float | None:
    """When an unfinished upload stops being resumable (None: never, or it is finished)."""
    if expiry <= 0 or info.get("sha256") or info.get("file_id"):
        return None
    return _epoch(info["updated"]) + expiry


def record_expires_at(info: dict[str, Any], expiry: float) -> float | None:
    """When the janitor may remove the upload's directory (None: never)."""
    if expiry <= 0:
        return None
    return _epoch(info.get("completed") or info["updated"]) + expiry


# -- the writer: blocking, one per PATCH ------------------------------------------------

@dataclass
class _Writer:
    """Appends to ``data`` and commits.  Every method runs in a worker thread, one at a time."""

    info_path: Path
    data_path: Path
    info: dict[str, Any]
    hasher: Any
    chunk_hasher: Any = None
    committed: int = 0
    written: int = 0
    snapshot: Any = None
    failed: bool = False
    fh: Any = None
    last_commit: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, info_path: Path, data_path: Path, info: dict[str, Any], hasher: Any | None,
             checksum: str | None) -> "_Writer":
        offset = info["offset"]
        try:
            fh = open(data_path, "r+b")
        except FileNotFoundError:
            raise StoragedError(f"upload {info['id']}: its bytes are missing") from None
        try:
            size = os.fstat(fh.fileno()).st_size
            if size < offset:
                raise StoragedError(f"upload {info['id']}: {size} bytes on disk, {offset} committed")
            if size > offset:  # written after the last commit, before a crash: not ours to keep
                fh.truncate(offset)
            if hasher is None:
                hasher = hashlib.sha256()
                remaining = offset
                while remaining:
                    chunk = fh.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        raise StoragedError(f"upload {info['id']}: short read at {offset - remaining}")
                    hasher.update(chunk)
                    remaining -= len(chunk)
            fh.seek(offset)
        except BaseException:
            fh.close()
            raise
        return cls(info_path, data_path, dict(info), hasher,
                   CHECKSUMS[checksum]() if checksum else None,
                   committed=offset, written=offset, snapshot=hasher.copy(), fh=fh)

    def write(self, data: bytes | bytearray, checkpoint: bool = False) -> None:
        try:
            if data:
                self.fh.write(data)
                self.hasher.update(data)
                if self.chunk_hasher is not None:
                    self.chunk_hasher.update(data)
                self.written += len(data)
            if checkpoint:
                self.commit()
        except OSError as exc:
            self.failed = True
            raise_storage_fault(exc)
            raise
        except BaseException:
            self.failed = True
            raise

    def due(self) -> bool:
        return (self.written - self.committed >= CHECKPOINT_BYTES
                or time.monotonic() - self.last_commit >= CHECKPOINT_SECONDS)

    def finish(self, tail: bytes | bytearray, new_length: int | None, expected: bytes | None) -> None:
        self.write(tail)
        if expected is not None and self.chunk_hasher.digest() != expected:
            raise ChecksumMismatch("checksum mismatch: the chunk was discarded")
        try:
            self.commit(new_length)
        except OSError as exc:
            self.failed = True
            raise_storage_fault(exc)
            raise

    def commit(self, new_length: int | None = None) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        info = {**self.info, "offset": self.written, "updated": now_iso()}
        if new_length is not None and info["length"] is None:
            info["length"] = new_length
        if is_complete(info) and not is_partial(info):
            info["sha256"] = self.hasher.hexdigest()
        write_json(self.info_path, info)
        self.info = info
        self.committed = self.written
        self.snapshot = self.hasher.copy()
        self.last_commit = time.monotonic()

    def rollback(self) -> None:
        """Back to the last commit: ``data`` truncated, the hash as it was."""
        self.close()  # an unflushed tail on a full disk may fail to flush: truncated below anyway
        os.truncate(self.data_path, self.committed)
        self.written = self.committed
        self.hasher = self.snapshot.copy()

    def close(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
            self.fh = None


# -- the service -------------------------------------------------------------------------

class Uploads:
    def __init__(self, layout: Layout, objects: ObjectStore, *, max_size: int, expiry: float,
                 chunk_size: int) -> None:
        self.layout = layout
        self.paths = UploadLayout(layout)
        self.objects = objects
        self.max_size = max_size
        self.expiry = expiry
        self.chunk_size = chunk_size
        # upload id -> (offset, SHA-256 of data[0:offset]); validated by the offset before use
        self._hashes: dict[str, tuple[int, Any]] = {}

    # -- reading -----------------------------------------------------------------------
    def _read_info(self, upload_id: str) -> dict[str, Any]:
        try:
            return read_json(self.paths.info(upload_id))
        except FileNotFoundError:
            raise NotFound(f"upload not found: {upload_id}") from None

    def _check_live(self, info: dict[str, Any]) -> None:
        when = expires_at(info, self.expiry)
        if when is not None and time.time() > when:
            raise Gone(f"upload expired: {info['id']}")

    async def get(self, upload_id: str) -> dict[str, Any]:
        """The upload's info; one that finished but is not yet published (a crash, or start-up has not
        reached it) is published first, so a client resuming never sees it complete without ``file_id``."""
        check_upload_id(upload_id)
        info = await asyncio.to_thread(self._read_info, upload_id)
        self._check_live(info)
        if info.get("sha256") and not info.get("file_id"):
            try:
                info = await self._publish_finished(upload_id) or info
            except (StoragedError, OSError, ValueError, Timeout) as exc:  # the next request tries again
                log.warning("uploads: could not publish finished upload %s: %s", upload_id, exc)
        return info

    def expires(self, info: dict[str, Any]) -> float | None:
        return expires_at(info, self.expiry)

    def _lock(self, upload_id: str):
        return _Guard(async_lock(self.paths.lock(upload_id), timeout=LOCK_WAIT))

    # -- creation ----------------------------------------------------------------------
    async def create(self, *, length: int | None, metadata: str | None, concat: str | None) -> dict[str, Any]:
        parse_metadata(metadata)
        if length is not None and length > self.max_size:
            raise PayloadTooLarge(f"Upload-Length {length} is larger than the limit of {self.max_size} bytes")
        upload_id = new_upload_id()
        now = now_iso()
        info = {"id": upload_id, "length": length, "offset": 0, "metadata": metadata, "concat": concat,
                "created": now, "updated": now}
        if length == 0 and concat != "partial":
            info["sha256"] = hashlib.sha256().hexdigest()
        stage = await asyncio.to_thread(self._stage, upload_id)
        try:
            await asyncio.to_thread(self._place, stage, upload_id, info)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, stage, True)
            raise
        if info.get("sha256"):
            async with self._lock(upload_id):
                info = await self._publish(upload_id, info)
        return info

    def _stage(self, upload_id: str) -> Path:
        stage = self.layout.tmp / f".tus-{upload_id}{TMP_SUFFIX}"
        try:
            stage.mkdir(parents=True)
            (stage / DATA).touch()
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise_storage_fault(exc)
            raise
        return stage

    def _place(self, stage: Path, upload_id: str, info: dict[str, Any]) -> None:
        """info.json into the staged directory, then the directory into place in one step."""
        try:
            write_json(stage / INFO, info)
            fsync_dir(stage)
            root = self.paths.root
            if not root.is_dir():
                root.mkdir(exist_ok=True)
                fsync_dir(root.parent)
            os.rename(stage, self.paths.dir(upload_id))
            fsync_dir(root)
        except OSError as exc:
            raise_storage_fault(exc)
            raise

    async def create_final(self, partials: list[str], metadata: str | None, concat: str) -> dict[str, Any]:
        """A final upload: the partials' bytes, in order, copied (and hashed) into a new upload."""
        parse_metadata(metadata)
        if not partials:
            raise BadRequest("Upload-Concat: final needs at least one partial upload")
        for pid in partials:
            check_upload_id(pid)
        upload_id = new_upload_id()
        stage = await asyncio.to_thread(self._stage, upload_id)
        try:
            hasher = hashlib.sha256()
            total = 0
            for pid in partials:
                async with self._lock(pid):
                    part = await asyncio.to_thread(self._read_info, pid)
                    self._check_live(part)
                    if not is_partial(part):
                        raise BadRequest(f"Upload-Concat: {pid} is not a partial upload")
                    if not is_complete(part):
                        raise BadRequest(f"Upload-Concat: partial upload {pid} is not complete "
                                         f"({part['offset']} of {part['length']} bytes)")
                    total += part["length"]
                    if total > self.max_size:
                        raise PayloadTooLarge(f"the final upload is larger than the limit of {self.max_size} bytes")
                    await asyncio.to_thread(_append_file, self.paths.data(pid), stage / DATA, hasher,
                                            part["length"])
            now = now_iso()
            info = {"id": upload_id, "length": total, "offset": total, "metadata": metadata, "concat": concat,
                    "created": now, "updated": now, "sha256": hasher.hexdigest()}
            await asyncio.to_thread(_fsync_file, stage / DATA)
            await asyncio.to_thread(self._place, stage, upload_id, info)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, stage, True)
            raise
        async with self._lock(upload_id):
            return await self._publish(upload_id, info)

    # -- PATCH -------------------------------------------------------------------------
    async def append(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes], *,
                     content_length: int | None = None, new_length: int | None = None,
                     checksum: tuple[str, bytes] | None = None) -> dict[str, Any]:
        """Apply a PATCH body at ``offset``; answers the upload's info after it (published when complete)."""
        check_upload_id(upload_id)
        async with self._lock(upload_id):
            info = await asyncio.to_thread(self._read_info, upload_id)
            self._check_live(info)
            if is_final(info):
                raise Forbidden("a final concatenated upload cannot be patched")
            if new_length is not None:
                if info["length"] is None:
                    if new_length < info["offset"]:
                        raise BadRequest(f"Upload-Length {new_length} is below the offset {info['offset']}")
                    if new_length > self.max_size:
                        raise PayloadTooLarge(f"Upload-Length {new_length} is larger than the limit of "
                                              f"{self.max_size} bytes")
                elif new_length != info["length"]:
                    raise BadRequest(f"Upload-Length cannot change (it is {info['length']})")
            if offset != info["offset"]:
                raise Conflict(f"Upload-Offset {offset} does not match the upload's offset {info['offset']}")
            if info.get("sha256") and not info.get("file_id"):
                info = await self._publish(upload_id, info)  # finished before a crash, not yet published
            length = info["length"] if info["length"] is not None else new_length
            limit = (length if length is not None else self.max_size) - offset
            if content_length is not None and content_length > limit:
                raise PayloadTooLarge(f"the body ({content_length} bytes) goes past the upload's end "
                                      f"({limit} bytes left)")
            if info.get("file_id"):
                return info
            info = await self._stream(upload_id, info, chunks, limit, new_length, checksum)
            if info.get("sha256"):
                info = await self._publish(upload_id, info)
            return info

    async def _stream(self, upload_id: str, info: dict[str, Any], chunks: AsyncIterable[bytes], limit: int,
                      new_length: int | None, checksum: tuple[str, bytes] | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        cached = self._hashes.pop(upload_id, None)
        hasher = cached[1] if cached is not None and cached[0] == info["offset"] else None
        writer = await asyncio.to_thread(_Writer.open, self.paths.info(upload_id), self.paths.data(upload_id),
                                         info, hasher, checksum[0] if checksum else None)
        incremental = checksum is None  # a checksummed chunk is kept whole or not at all
        pending: asyncio.Future | None = None
        buf = bytearray()
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"the body goes past the upload's end ({limit} bytes left)")
                buf += chunk
                if len(buf) >= self.chunk_size:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, writer.write, buf, incremental and writer.due())
                    buf = bytearray()
            if pending is not None:
                await pending
                pending = None
            await loop.run_in_executor(None, writer.finish, buf, new_length, checksum[1] if checksum else None)
            return writer.info
        except BaseException as exc:
            if pending is not None:
                # The buffer belongs to the thread until it is done with it.
                await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
            keep = incremental and not writer.failed and not isinstance(exc, StoragedError)
            # The connection broke (or the daemon is stopping): keep what arrived.
            await asyncio.shield(loop.run_in_executor(None, _keep_or_rollback, writer, buf if keep else None))
            raise
        finally:
            await asyncio.shield(loop.run_in_executor(None, writer.close))
            self._hashes[upload_id] = (writer.committed, writer.snapshot)

    # -- publishing --------------------------------------------------------------------
    async def _publish(self, upload_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Make the finished bytes an object (caller holds the upload's lock)."""
        meta = metadata_view(info.get("metadata"))
        name = meta.get("filename") or meta.get("name")
        content_type = meta.get("filetype") or meta.get("type")
        data = self.paths.data(upload_id)
        oid = info["sha256"]
        if await asyncio.to_thread(data.exists):
            stored = await self.objects.publish(data, oid, name, content_type, info["length"])
        else:
            stored = await self.objects.meta(oid)  # published before a crash
        info = {**info, "file_id": stored["file_id"], "completed": now_iso()}
        await asyncio.to_thread(write_json, self.paths.info(upload_id), info)
        self._hashes.pop(upload_id, None)
        return info

    async def recover(self) -> int:
        """Publish uploads that finished before a crash but were not published.  At start-up."""
        done = 0
        for upload_id in await asyncio.to_thread(self.paths.upload_ids):
            try:
                info = await asyncio.to_thread(self._read_info, upload_id)
                if not info.get("sha256") or info.get("file_id"):
                    continue
                if await self._publish_finished(upload_id) is not None:
                    done += 1
            except (StoragedError, OSError, ValueError, Timeout) as exc:
                log.warning("uploads: could not finish %s at start-up: %s", upload_id, exc)
        return done

    async def _publish_finished(self, upload_id: str) -> dict[str, Any] | None:
        """Publish an upload found finished but unpublished (under its lock, so once); its info with
        ``file_id`` after, whoever published it, or None if it is not finished."""
        async with self._lock(upload_id):
            info = await asyncio.to_thread(self._read_info, upload_id)
            if not info.get("sha256"):
                return None
            if info.get("file_id"):
                return info
            return await self._publish(upload_id, info)

    # -- DELETE ------------------------------------------------------------------------
    async def terminate(self, upload_id: str) -> None:
        check_upload_id(upload_id)
        async with self._lock(upload_id):
            await asyncio.to_thread(self._read_info, upload_id)
            await asyncio.to_thread(_trash, self.layout, self.paths.dir(upload_id))
            self._hashes.pop(upload_id, None)


class _Guard:
    """An upload's lock whose bounded wait answers 423."""

    def __init__(self, lock) -> None:
        self.lock = lock

    async def __aenter__(self):
        try:
            await self.lock.__aenter__()
        except Timeout:
            raise Locked("another request is writing this upload; try again") from None
        return self

    async def __aexit__(self, *exc_info):
        await self.lock.__aexit__(*exc_info)


def _keep_or_rollback(writer: _Writer, tail: bytearray | None) -> None:
    if tail is not None:
        try:
            writer.write(tail)
            writer.commit()
            return
        except Exception:
            log.exception("uploads: could not keep the bytes of a broken PATCH on %s", writer.info["id"])
    writer.rollback()


def _append_file(src: Path, dst: Path, hasher: Any, length: int) -> None:
    try:
        with open(src, "rb") as fin, open(dst, "ab") as fout:
            remaining = length
            while remaining:
                chunk = fin.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise StoragedError(f"partial upload {src.parent.name}: its bytes are short")
                hasher.update(chunk)
                fout.write(chunk)
                remaining -= len(chunk)
    except OSError as exc:
        raise_storage_fault(exc)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _trash(layout: Layout, path: Path) -> None:
    """The directory disappears in one step (renamed into tmp), then is removed."""
    trash(path, layout.tmp)


# -- expiry (the janitor's part) -----------------------------------------------------------

@dataclass
class UploadEntry:
    upload_id: str
    path: Path
    when: float          # expired_uploads: when it expired; all_uploads: its last change (epoch seconds)
    size: int


def _size(d: Path) -> int:
    size = 0
    for name in (INFO, DATA):
        try:
            size += os.lstat(d / name).st_size
        except FileNotFoundError:
            pass
    return size


def all_uploads(layout: Layout) -> Iterator[UploadEntry]:
    """Every upload directory (for counting).  Blocking."""
    paths = UploadLayout(layout)
    for upload_id in paths.upload_ids():
        d = paths.dir(upload_id)
        try:
            when = os.stat(d / INFO).st_mtime
        except FileNotFoundError:
            continue
        yield UploadEntry(upload_id, d, when, _size(d))


def expired_uploads(layout: Layout, expiry: float, now: float | None = None) -> Iterator[UploadEntry]:
    """Upload directories past their expiry (unfinished: since the last write; finished: since done).  Blocking."""
    if expiry <= 0:
        return
    now = time.time() if now is None else now
    paths = UploadLayout(layout)
    for upload_id in paths.upload_ids():
        d = paths.dir(upload_id)
        try:
            info = read_json(d / INFO)
            when = record_expires_at(info, expiry)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # fsck reports it; the janitor does not guess
        if when is None or when > now:
            continue
        yield UploadEntry(upload_id, d, when, _size(d))


def remove_expired(layout: Layout, expiry: float, upload_id: str, now: float | None = None) -> bool:
    """Remove one expired upload, under its lock taken without waiting.  False when it is not
    (or no longer) expired; ``filelock.Timeout`` when a request holds it.  Blocking."""
    paths = UploadLayout(layout)
    with sync_lock(paths.lock(upload_id), timeout=0):
        try:
            info = read_json(paths.info(upload_id))
        except FileNotFoundError:
            return False
        when = record_expires_at(info, expiry)
        if when is None or when > (time.time() if now is None else now):
            return False
        _trash(layout, paths.dir(upload_id))
    return True
