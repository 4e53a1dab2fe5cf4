"""Content-addressed objects.

Protocol
--------
*Put.*  Bytes stream into ``<data>/tmp/upload-<random>.tmp`` while being
hashed (SHA-256), in a worker thread, one buffer ahead of the network.  The
temp file is fsynced; then, holding the object's lock, either the object
already exists (a dedupe, see below) or a staging directory ``<data>/tmp/.obj-….tmp/`` is filled with the
bytes (renamed in), the ``the_file`` symlink and ``meta.json``, fsynced, and
renamed to ``<data>/<id[:2]>/<id[2:]>/`` in one step; the parent directory is
fsynced last.

*Dedupe heals.*  When the id already exists, the stored copy is verified
before the new temp file is dropped: first what costs nothing (``meta.json``
parses, the bytes are there with its size, ``the_file`` points at them), then
the full SHA-256 of the stored bytes, in the same worker thread, under the
object's lock.  Only a copy that passes both is answered
``"deduplicated": true``.  A copy that fails is healed in place with the new
bytes — the damaged bytes are hard-linked into ``lost+found/`` and the good
ones renamed over them (a reader sees the old bytes or the new, never none),
a damaged ``meta.json`` is set aside and rewritten, the link recreated — and
the answer says ``"deduplicated": false`` with ``"repaired"`` naming what was
wrong.  The object directory stays, so its analyses and its pin are kept.
Trade-off: a dedupe costs one sequential read of the stored copy (at disk
speed, off the event loop) before it is answered, instead of answering at
once and verifying later; in exchange the answer never vouches for bytes
nobody checked, and no background task holds the only good copy.

*What a reader sees.*  An object directory exists complete or not at all, so
a reader needs no lock: if ``meta.json`` can be read, the bytes are all there
and hash to the id.

*Who waits.*  Committers of the same id wait on ``locks/objects/<id>.lock``;
committers of different ids never wait for each other; uploads wait for
nothing while streaming.

*Delete.*  Under the object's lock, the directory is renamed out to
``<data>/tmp/`` (it disappears in one step) and removed from there.

*What a crash leaves.*  Temp files and staging/trash directories under
``<data>/tmp/``, and ``.<name>.<random>.tmp`` files beside the final names
of other writes (``storaged.store.atomic``), swept at start-up and every
``sweep_period`` while the daemon runs, once older than ``temp_max_age`` (so
none outlives ``temp_max_age + sweep_period``, however long the daemon runs); never a
partial object under a final name.  A crash in the middle of a heal leaves
the object as damaged as it was (plus a copy in ``lost+found/``), for the
next upload of the same bytes or ``storaged fsck --repair``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import re
import secrets
import shutil
import stat
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterable, Callable, Iterable
from urllib.parse import quote

from storaged.errors import BadRequest, DamagedRecord, NotFound, PayloadTooLarge
from storaged.store import damage
from storaged.store.atomic import (
    TMP_SUFFIX,
    async_lock,
    dumps,
    fsync_dir,
    raise_storage_fault,
    read_json,
    sync_lock,
    trash,
    unlink_quiet,
    write_bytes,
    write_json,
)
from storaged.store.smallobjects import SmallObject, SmallObjects, read_verified
from storaged.store.layout import RESERVED_TOP, Layout, check_object_id

log = logging.getLogger("storaged.store")

META = "meta.json"
THE_FILE = "the_file"
KEYFRAMES = "keyframes.json"  # storaged.sessions.keyframes: learnt from the bytes, so a heal drops it
RESERVED_NAMES = {META, THE_FILE, "analysis", "probe.json", "pinned", KEYFRAMES}
MAX_NAME_CHARS = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clean_name(name: str | None) -> str:
    """The original name as we keep it: last path component, no control characters, bounded."""
    if not name:
        return "file"
    name = unicodedata.normalize("NFC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".") or "file"
    if len(name) > MAX_NAME_CHARS:
        # Cut the stem, not the extension: the stored name's extension gives the served type.
        stem, dot, ext = name.rpartition(".")
        keep = MAX_NAME_CHARS - len(ext) - 1
        name = f"{stem[:keep]}.{ext}" if dot and stem and 0 < len(ext) <= 16 else name[:MAX_NAME_CHARS]
    return name


def safe_filename(name: str | None) -> str:
    """An ASCII file name safe on any filesystem, keeping the extension: ``safename.ext``."""
    name = clean_name(name)
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = _UNSAFE.sub("_", ascii_stem).strip("._-")[:100] or "file"
    ext = _UNSAFE.sub("", ext)[:16].lower()
    out = f"{stem}.{ext}" if ext else stem
    if out in RESERVED_NAMES:
        out = "file_" + out
    return out


def download_link(meta: dict[str, Any]) -> str:
    return f"/download/{meta['file_id']}/{quote(meta['stored_name'])}"


_DOWNLOAD_LINK = re.compile(r"^(?:https?://[^/]+)?/download/([0-9a-f]{64})(?:/[^/?#]*)?(?:[?#].*)?$")


def linked_object(url: Any) -> str | None:
    """The object id a ``/download/<id>[/<name>]`` link (relative or absolute) names; None for anything else."""
    if not isinstance(url, str):
        return None
    m = _DOWNLOAD_LINK.match(url)
    return m.group(1) if m else None


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class ObjectStore:
    def __init__(self, layout: Layout, *, max_size: int, chunk_size: int = 1024 * 1024,
                 small: SmallObjects | None = None) -> None:
        self.layout = layout
        self.max_size = max_size
        self.chunk_size = chunk_size
        self.small = small or SmallObjects(0, 0)
        # fan-out dir -> (its mtime, [(meta.json mtime, id)]): a cache for recent(), checked on every call
        self._recent_cache: dict[str, tuple[int, list[tuple[int, str]]]] = {}

    # -- put -------------------------------------------------------------
    async def put(self, chunks: AsyncIterable[bytes], name: str | None = None,
                  content_type: str | None = None) -> dict[str, Any]:
        """Store a stream of bytes; answer its meta plus ``deduplicated``."""
        loop = asyncio.get_running_loop()
        tmp = self.layout.tmp / f"upload-{secrets.token_hex(8)}{TMP_SUFFIX}"
        hasher = hashlib.sha256()
        size = 0
        pending: asyncio.Future | None = None
        buf = bytearray()
        fh = None
        try:
            fh = await loop.run_in_executor(None, _open_exclusive, tmp)
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_size:
                    raise PayloadTooLarge(f"upload larger than the limit of {self.max_size} bytes")
                buf += chunk
                if len(buf) >= self.chunk_size:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, _absorb, fh, hasher, buf)
                    buf = bytearray()
            if pending is not None:
                await pending
                pending = None
            await loop.run_in_executor(None, _finish, fh, hasher, buf)
            fh = None
            oid = hasher.hexdigest()
            async with async_lock(self.layout.object_lock(oid)):
                return await loop.run_in_executor(None, self.publish_blocking, tmp, oid, name, content_type, size)
        except BaseException:
            if pending is not None:
                # The buffer belongs to the thread until it is done with it.  Its own
                # failure (a full disk) is the one being raised: it must not skip the discard.
                await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
            await loop.run_in_executor(None, _discard, fh, tmp)
            raise

    async def publish(self, path: Path, oid: str, name: str | None, content_type: str | None,
                      size: int) -> dict[str, Any]:
        """Turn a complete, fsynced file whose SHA-256 is ``oid`` into the object (see ``publish_blocking``)."""
        async with async_lock(self.layout.object_lock(oid)):
            return await asyncio.to_thread(self.publish_blocking, path, oid, name, content_type, size)

    def publish_blocking(self, tmp: Path, oid: str, name: str | None, content_type: str | None,
                         size: int) -> dict[str, Any]:
        """The one way bytes become an object.  Caller holds the object's lock; ``tmp`` is on the
        data filesystem, fsynced, and hashes to ``oid``.  It is renamed into the object (or
        unlinked when the object exists: a dedupe).  Answers the meta plus ``deduplicated``."""
        final = self.layout.object_dir(oid)
        if final.is_dir():
            _, trouble = verify_object(final, oid)
            if trouble is None:
                unlink_quiet(tmp)
                meta = read_json(final / META)
                return {**meta, "deduplicated": True}
            return self._heal(final, tmp, oid, name, content_type, size, trouble)
        return self._commit_new([(tmp, oid, name, content_type, size)], map)[0]

    def _commit_new(self, items: list[tuple[Path, str, str | None, str | None, int]],
                    run: Callable[..., Iterable]) -> list[dict[str, Any]]:
        """Make new objects of fsynced temp files, in waves so that each wave's fsyncs can share the
        filesystem's journal commits when ``run`` (``map`` or a pool's) overlaps them.  Callers hold
        each id's lock and know that none of the ids exists.  Every object is durable on return."""
        stages: list[Path] = []
        renamed = 0
        try:
            def stage_one(item: tuple[Path, str, str | None, str | None, int]) -> tuple[Path, dict[str, Any]]:
                tmp, oid, name, content_type, size = item
                meta = new_meta(oid, name, content_type, size)
                stage = self.layout.tmp / f".obj-{oid[:16]}-{secrets.token_hex(4)}{TMP_SUFFIX}"
                stage.mkdir()
                stages.append(stage)
                os.rename(tmp, stage / meta["stored_name"])
                os.symlink(meta["stored_name"], stage / THE_FILE)
                write_bytes(stage / META, dumps(meta), sync_dir=False)  # the stage's fsync below covers it
                return stage, meta

            staged = list(run(stage_one, items))
            list(run(fsync_dir, [stage for stage, _ in staged]))
            parents = list(dict.fromkeys(self.layout.object_dir(item[1]).parent for item in items))
            created = [parent for parent in parents if not parent.exists()]
            for parent in created:
                parent.mkdir(exist_ok=True)
            if created:
                fsync_dir(self.layout.root)
            for (stage, _), item in zip(staged, items):
                os.rename(stage, self.layout.object_dir(item[1]))
                renamed += 1
            list(run(fsync_dir, parents))
        except BaseException as exc:
            # write_bytes may already have turned a disk fault into its domain error.
            for stage in stages[renamed:]:
                shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError):
                raise_storage_fault(exc)
            raise
        return [{**meta, "deduplicated": False} for _, meta in staged]

    def _heal(self, od: Path, tmp: Path, oid: str, name: str | None, content_type: str | None, size: int,
              trouble: str) -> dict[str, Any]:
        """Replace a damaged stored copy by the verified bytes in ``tmp`` (the object's lock is held)."""
        self.small.forget(oid)
        unlink_quiet(od / KEYFRAMES)
        set_aside: list[str] = []

        def keep_evidence(path: Path, move: bool) -> None:
            dest = self.layout.lost_found_for(path)
            (os.rename if move else os.link)(path, dest)
            set_aside.append(os.path.relpath(dest, self.layout.root))

        try:
            try:
                meta = read_json(od / META)
                if not isinstance(meta, dict) or meta.get("stored_name") != safe_filename(meta.get("stored_name")):
                    raise ValueError("unusable")
                meta = {**meta, "size": size}
                meta_ok = True
            except (FileNotFoundError, ValueError):
                meta, meta_ok = new_meta(oid, name, content_type, size), False
            stored = meta["stored_name"]
            if not meta_ok:
                # Without a readable meta.json nothing says which files are the bytes: set aside
                # everything that is not the object's own furniture (its analyses, probe, pin).
                for entry in os.listdir(od):
                    if entry not in (THE_FILE, "analysis", "probe.json", "pinned"):
                        keep_evidence(od / entry, move=True)
            elif os.path.lexists(od / stored):
                keep_evidence(od / stored, move=False)  # a link: readers keep the old bytes until the rename
            os.rename(tmp, od / stored)
            link_tmp = od / f".{THE_FILE}.{secrets.token_hex(4)}{TMP_SUFFIX}"
            os.symlink(stored, link_tmp)
            os.rename(link_tmp, od / THE_FILE)
            if not meta_ok or read_json(od / META).get("size") != size:
                write_json(od / META, meta)
            fsync_dir(od)
            if set_aside:
                fsync_dir(self.layout.lost_found)
        except BaseException as exc:
            unlink_quiet(tmp)
            if isinstance(exc, OSError):
                raise_storage_fault(exc)
            raise
        where = f"; the damaged files are in {', '.join(set_aside)}" if set_aside else ""
        log.warning("object %s was damaged (%s): healed with the bytes of a new upload%s", oid, trouble, where)
        return {**meta, "deduplicated": False, "repaired": f"the stored copy was damaged ({trouble}) and was "
                                                          f"replaced by these bytes{where}"}

    def put_file_blocking(self, path: Path, name: str | None = None,
                          content_type: str | None = None) -> dict[str, Any]:
        """Move an existing file (on the data filesystem) into the store.  Blocking: for workers/CLI."""
        return self.put_files_blocking([(Path(path), name, content_type)], threads=1)[0]

    def put_files_blocking(self, files: list[tuple[Path, str | None, str | None]],
                           threads: int = 8) -> list[dict[str, Any]]:
        """Move existing files (on the data filesystem) into the store as one group commit: answers
        each one's meta, in order, once every one of them is durable.  Blocking: for workers/CLI.

        The files are hashed and fsynced side by side; then, holding the locks of all their ids
        (taken in id order, so two batches never wait for each other in a cycle), the new objects
        are staged, their directories fsynced, renamed into place and their parents fsynced, each
        step for all objects before the next (see ``_commit_new``).  The same bytes twice in one
        batch are one object; the second answer is a dedupe.
        """
        self.layout.tmp.mkdir(parents=True, exist_ok=True)
        tmps: list[Path] = []
        try:
            for path, _, _ in files:
                tmp = self.layout.tmp / f"upload-{secrets.token_hex(8)}{TMP_SUFFIX}"
                os.rename(path, tmp)
                tmps.append(tmp)
            with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
                digests = list(pool.map(_hash_and_sync, tmps))
                for size in (size for _, size in digests):
                    if size > self.max_size:
                        raise PayloadTooLarge(f"file larger than the limit of {self.max_size} bytes")
                first: dict[str, int] = {}  # id -> index of its first file in the batch
                for i, (oid, _) in enumerate(digests):
                    first.setdefault(oid, i)
                answers: dict[str, dict[str, Any]] = {}
                with ExitStack() as locks:
                    for oid in sorted(first):
                        locks.enter_context(sync_lock(self.layout.object_lock(oid)))
                    new = []
                    for oid, i in first.items():
                        if self.layout.object_dir(oid).is_dir():  # verify, dedupe or heal, one at a time
                            answers[oid] = self.publish_blocking(tmps[i], oid, files[i][1], files[i][2],
                                                                 digests[i][1])
                        else:
                            new.append((tmps[i], oid, files[i][1], files[i][2], digests[i][1]))
                    for item, meta in zip(new, self._commit_new(new, pool.map)):
                        answers[item[1]] = meta
            out = []
            for i, (oid, _) in enumerate(digests):
                if first[oid] == i:
                    out.append(answers[oid])
                else:
                    unlink_quiet(tmps[i])
                    out.append({**answers[oid], "deduplicated": True})
            return out
        except BaseException:
            for tmp in tmps:
                unlink_quiet(tmp)
            raise

    # -- read --------------------------------------------------------------
    def meta_blocking(self, oid: str) -> dict[str, Any]:
        check_object_id(oid)
        try:
            meta = read_json(self.layout.object_dir(oid) / META)
        except FileNotFoundError:
            raise NotFound(f"file not found: {oid}") from None
        except ValueError as exc:
            raise DamagedRecord(f"{oid[:2]}/{oid[2:]}/{META}", f"not valid JSON ({exc}); uploading the "
                                                                 "same bytes again also repairs it") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("stored_name"), str):
            raise DamagedRecord(f"{oid[:2]}/{oid[2:]}/{META}", "not an object's meta")
        return meta

    async def meta(self, oid: str) -> dict[str, Any]:
        check_object_id(oid)
        return await asyncio.to_thread(self.meta_blocking, oid)

    async def small_object(self, oid: str, meta: dict[str, Any], content_type: str) -> SmallObject | None:
        """The object's bytes from memory, filling the cache on a miss; None for objects not cached."""
        entry = self.small.get(oid)
        if entry is not None or not self.small.fits(meta.get("size", -1)):
            return entry
        generation = self.small.generation()
        try:
            found = await asyncio.to_thread(read_verified, self.data_path(oid, meta), oid, self.small.max_object)
        except OSError:
            return None  # missing or unreadable here: the file path answers (or explains) it
        if found is None:
            return None
        entry = SmallObject(found[0], found[1], content_type)
        self.small.put(oid, entry, generation)
        return entry

    def data_path(self, oid: str, meta: dict[str, Any]) -> Path:
        return self.layout.object_dir(oid) / meta["stored_name"]

    async def open_path(self, oid: str) -> tuple[Path, dict[str, Any]]:
        meta = await self.meta(oid)
        return self.data_path(oid, meta), meta

    async def list(self, limit: int, after: str | None = None) -> dict[str, Any]:
        if after is not None and not re.fullmatch(r"[0-9a-f]{1,64}", after):
            raise BadRequest("malformed cursor: expected a file_id")
        return await asyncio.to_thread(self._list_blocking, limit, after)

    def _list_blocking(self, limit: int, after: str | None) -> dict[str, Any]:
        files: list[dict[str, Any]] = []
        last = None
        for oid in self.layout.object_ids():
            if after is not None and oid <= after:
                continue
            if len(files) == limit:
                return {"files": files, "next_cursor": last}
            try:
                files.append(self.meta_blocking(oid))
            except NotFound:
                continue  # deleted since the listing
            except DamagedRecord as exc:
                damage.skipped(exc.extra["damaged"], "not readable")
                continue
            last = oid
        return {"files": files, "next_cursor": None}

    async def recent(self, limit: int, offset: int = 0) -> dict[str, Any]:
        """Stored files' meta, newest first: ``{"files": [meta], "total": N}`` (for the pages people read)."""
        return await asyncio.to_thread(self._recent_blocking, limit, offset)

    def _recent_blocking(self, limit: int, offset: int) -> dict[str, Any]:
        # meta.json is written once, when the object is committed: its mtime is the upload time.  A
        # fan-out directory's own mtime changes whenever an object enters or leaves it (rename in or
        # out), so only the directories that changed since the last call are read again: with 10k
        # objects a warm call stats 256 directories instead of 10k files.
        stamped = []
        seen = set()
        for top in self.layout.fanout_dirs():
            seen.add(top)
            try:
                dir_mtime = os.stat(self.layout.root / top).st_mtime_ns
            except FileNotFoundError:
                continue
            cached = self._recent_cache.get(top)
            if cached is None or cached[0] != dir_mtime:
                entries = []
                for oid in self.layout.object_ids_in(top):
                    try:
                        entries.append((os.stat(self.layout.object_dir(oid) / META).st_mtime_ns, oid))
                    except FileNotFoundError:
                        continue
                cached = self._recent_cache[top] = (dir_mtime, entries)
            stamped.extend(cached[1])
        for gone in set(self._recent_cache) - seen:
            self._recent_cache.pop(gone, None)
        stamped.sort(reverse=True)
        files = []
        for _, oid in stamped[offset:offset + limit]:
            try:
                files.append(read_json(self.layout.object_dir(oid) / META))
            except (FileNotFoundError, ValueError):
                continue
        return {"files": files, "total": len(stamped)}

    # -- delete ------------------------------------------------------------
    async def delete(self, oid: str) -> None:
        check_object_id(oid)
        async with async_lock(self.layout.object_lock(oid)):
            await asyncio.to_thread(self.delete_blocking, oid)

    def delete_blocking(self, oid: str) -> None:
        self.small.forget(oid)
        final = self.layout.object_dir(oid)
        if not final.is_dir():
            raise NotFound(f"file not found: {oid}")
        trash(final, self.layout.tmp)

    # -- housekeeping ------------------------------------------------------
    def sweep_temps(self, max_age: float) -> list[str]:
        """Remove temps older than ``max_age`` seconds: every entry of <data>/tmp, and the
        ``.<name>.<random>.tmp`` files (or dirs) an interrupted write left beside its final name anywhere else
        (a stored file's name never starts with a dot, so none is taken for a temp)."""
        cutoff = time.time() - max_age
        root = self.layout.root
        try:
            removed = [name for name in os.listdir(self.layout.tmp) if _remove_if_older(self.layout.tmp / name, cutoff)]
        except FileNotFoundError:
            removed = []
        # One directory at a time and no list of its names: a record kind holds a million of them.
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            try:
                entries = os.scandir(directory)
            except OSError:  # gone, or not ours to read: as os.walk, which this was, skips it
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == "." and name.endswith(TMP_SUFFIX):
                        if _remove_if_older(Path(entry.path), cutoff):
                            removed.append(os.path.relpath(entry.path, root))
                    elif entry.is_dir(follow_symlinks=False) and not (directory == str(root) and name in RESERVED_TOP):
                        stack.append(entry.path)
        return removed


def _remove_if_older(path: Path, cutoff: float) -> bool:
    try:
        st = os.lstat(path)
        if st.st_mtime > cutoff:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def sweep_period(max_age: float) -> float:
    """Seconds between sweeps of ``<data>/tmp`` by a running daemon (fsck allows a temp this much longer)."""
    return min(600.0, max(1.0, max_age / 4))


def new_meta(oid: str, name: str | None, content_type: str | None, size: int) -> dict[str, Any]:
    original = clean_name(name)
    stored = safe_filename(original)
    if not content_type or content_type in ("application/octet-stream", "multipart/form-data"):
        content_type = guess_type(stored)
    return {
        "file_id": oid,
        "name": original,
        "stored_name": stored,
        "size": size,
        "content_type": content_type,
        "created": now_iso(),
    }


def verify_object(od: Path, oid: str, *, full: bool = True) -> tuple[int, str | None]:
    """(bytes hashed, what is wrong or None) for the object directory ``od``.  Blocking.

    Cheap checks first (meta.json, the bytes' size, the link), then, when ``full``,
    the SHA-256 of the bytes.  Shared by fsck and the dedupe check of a put."""
    try:
        meta = read_json(od / META)
    except FileNotFoundError:
        return 0, "meta.json is missing"
    except ValueError:
        return 0, "meta.json is not valid JSON"
    if not isinstance(meta, dict) or not isinstance(meta.get("stored_name"), str) \
            or "/" in meta["stored_name"] or meta["stored_name"] in ("", ".", ".."):
        return 0, "meta.json has no usable stored_name"
    data = od / meta["stored_name"]
    try:
        on_disk = os.stat(data).st_size
    except FileNotFoundError:
        return 0, f"the bytes ({meta['stored_name']}) are missing"
    if meta.get("size") != on_disk:
        return 0, f"meta.json says {meta.get('size')} bytes, the file has {on_disk}"
    size = 0
    if full:
        h = hashlib.sha256()
        try:
            with open(data, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return 0, f"the bytes ({meta['stored_name']}) are missing"
        if h.hexdigest() != oid:
            return size, "content does not hash to its id"
    try:
        link = os.readlink(od / THE_FILE)
    except OSError:
        link = None
    if link != meta["stored_name"]:
        return size, f"the_file link {'is missing' if link is None else 'points to ' + link}"
    return size, None


def _hash_and_sync(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, which is fsynced before the answer."""
    with open(path, "rb+") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        size = os.fstat(fh.fileno()).st_size
        os.fsync(fh.fileno())
    return digest, size


def _open_exclusive(path: Path):
    try:
        return open(path, "xb")
    except OSError as exc:
        raise_storage_fault(exc)
        raise


def _absorb(fh, hasher, data: bytearray) -> None:
    hasher.update(data)
    try:
        fh.write(data)
    except OSError as exc:
        raise_storage_fault(exc)
        raise


def _finish(fh, hasher, tail: bytearray) -> None:
    try:
        if tail:
            _absorb(fh, hasher, tail)
        fh.flush()
        os.fsync(fh.fileno())
    except OSError as exc:
        raise_storage_fault(exc)
        raise
    finally:
        fh.close()


def _discard(fh, tmp: Path) -> None:
    if fh is not None:
        try:
            fh.close()
        except OSError:
            pass
    unlink_quiet(tmp)
