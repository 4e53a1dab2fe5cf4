"""The tier's outbox and uploads.

Protocol
--------
*What is replicated.*  Each family's source (:mod:`storaged.tier.sources`)
names its items and the files that make them up.  Keys map the tree 1:1:
content-addressed bytes go to ``<prefix><id[:2]>/<id[2:]>/the_file`` (the
same bytes get the same key on every box: boxes sharing a bucket dedupe and
never write different bytes under one key); a box's own files (``meta.json``,
records…) go to ``<prefix>boxes/<box>/<their path in the tree>``.

*Outbox.*  One JSON entry per item, ``<data>/tier/outbox/<family>-<ident>.json``
(atomic writes): written when the item is queued (a new upload at once, the
rest by a walk every ``tier_scan_interval``), when a multipart upload is
created, after each of its parts, and after a failure (``attempts``,
``next_try``, ``last_error``).  It is removed only after the item's
``remote.json`` is written, so a crash at any instant leaves either the
entry (the work is done again, or resumed) or the record.

*Sending.*  At most ``tier_concurrency`` items are worked on at once (each in
a worker thread, never on the event loop), all within ``tier_bandwidth``
bytes/s.  Before sending content-addressed bytes, a HEAD asks whether the key
already holds them (same size and ``sha256`` metadata): then nothing is sent
(dedupe).  Such a key holding *other* bytes is never overwritten (an error
to look at).  A box's own keys are simply written (no other box writes them).
Files up to ``tier_part_size`` go in one PUT with Content-MD5 (the engine
refuses bytes that arrive damaged); larger ones as a multipart upload whose
id and finished parts are recorded in the entry, so after a restart or a
SIGKILL the upload continues with the parts the engine still holds
(ListParts must agree with the recorded MD5s) and is completed, or, when
the engine has lost it, aborted and begun again.  Multipart uploads of our
keys older than a day that no entry knows (a SIGKILL between creating one and
recording it) are aborted when the key is next uploaded.

*Verification.*  The bytes read for sending are hashed: content-addressed
bytes must hash to their id (damaged local bytes are never replicated).
Every PUT and part carries Content-MD5, which the engine checks on receipt.
The PUT's (or the completion's) answer carries the ETag the engine computed
from the bytes it stored (their MD5, or the MD5 of the parts' MD5s with
``-<parts>``); it must equal the one computed here.  An engine whose ETags
are not MD5s (AWS with SSE-KMS) is asked with a HEAD instead: same size and
our ``sha256`` metadata.  Only then is ``remote.json`` written beside the
item (``{bucket, endpoint, files: {rel: {key, size, sha256, etag}}, verified}``).

*Failures.*  A failed item waits 1 s, 2 s, 4 s… up to ``tier_retry_max_backoff``
(storaged.supervise.backoff) by its attempts and is tried again; the error is logged
when it changes and shown in /metrics (``storaged_tier_last_error``).
Nothing is ever dropped because the engine is down or refuses us.

*Stopping.*  Closing lets the part in flight finish (socket timeouts bound
it) and leaves the entries as they are.

*CPU.*  Items are worked on in the tier's own threads, niced by 10 (Linux
schedules threads as tasks of their own), so hashing and sending replicas
yield the cores to the daemon's requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from storaged.supervise.backoff import Backoff, woken
from storaged.store.objects import now_iso
from storaged.store.atomic import read_json, unlink_quiet, write_json
from storaged.store.layout import Layout
from storaged.tier.client import S3, TierError, md5_etag, multipart_etag
from storaged.tier.settings import TierSettings
from storaged.tier.sources import ObjectSource, Item, TierSource, Upload

log = logging.getLogger("storaged.tier")

STALE_UPLOAD_AGE = 86400.0
TIER_NICE = 10
AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
              "403", "401"}


class Stopping(Exception):
    """The tier is closing: leave the entry as it is."""


def explain(exc: BaseException) -> str:
    """One clear line for the log and /metrics."""
    if isinstance(exc, TierError) and exc.code in AUTH_CODES:
        return (f"the engine refused our credentials ({exc}): check tier_credentials_file or "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, TierError) and exc.code == "NoSuchBucket":
        return f"the bucket does not exist ({exc}): create it or fix tier_bucket"
    return str(exc) or type(exc).__name__


class Tier:
    def __init__(self, layout: Layout, settings: TierSettings, *, sources: list[TierSource] | None = None,
                 client: S3 | None = None) -> None:
        self.layout = layout
        self.settings = settings
        self.sources = {s.family: s for s in (sources or [ObjectSource()])}
        self.s3 = client or S3(settings)
        self.outbox = layout.root / "tier" / "outbox"
        self.entries: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.backoff = Backoff(1.0, settings.max_backoff)
        self.stop_flag = threading.Event()
        self.last_error: str | None = None
        self.last_error_at = 0.0
        self._count_lock = threading.Lock()
        self.counts = {"items": 0, "files": 0, "bytes": 0, "deduplicated": 0, "sent": 0, "failures": 0, "resumed": 0}
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._workers: set[asyncio.Task] = set()
        # The uploads' own threads, at a lower CPU priority: hashing and sending replicas must not take
        # the cores from the daemon's requests (a replica can wait; a client should not).
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="storaged-tier",
                                        initializer=_lower_priority)

    # -- life ------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self.entries = await asyncio.to_thread(self._load_blocking)
        if self.entries:
            log.info("storage tier: %d item(s) in the outbox, resuming", len(self.entries))
        self._tasks = [asyncio.create_task(self._dispatch(), name="tier-dispatch"),
                       asyncio.create_task(self._scan_loop(), name="tier-scan")]

    async def close(self) -> None:
        self.stop_flag.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._workers:
            await asyncio.wait(self._workers, timeout=30)
        self._tasks = []
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _load_blocking(self) -> dict[str, dict[str, Any]]:
        self.outbox.mkdir(parents=True, exist_ok=True)
        out = {}
        for entry in os.scandir(self.outbox):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                data = read_json(Path(entry.path))
            except (OSError, ValueError):
                log.warning("storage tier: unreadable outbox entry %s left alone", entry.name)
                continue
            if isinstance(data, dict) and data.get("family") in self.sources:
                data["next_try"] = 0.0  # a restart is a good moment to try again
                out[entry.name[:-5]] = data
        return out

    # -- queueing --------------------------------------------------------------------
    @staticmethod
    def entry_name(family: str, ident: str) -> str:
        return f"{family}-{ident}"

    def enqueue_blocking(self, family: str, ident: str) -> dict[str, Any] | None:
        """Write the entry (once); answer it, or None when it was already queued."""
        name = self.entry_name(family, ident)
        path = self.outbox / f"{name}.json"
        if name in self.entries or path.exists():
            return None
        item = self.sources[family].item(self.layout, ident)
        if item is None:
            return None
        entry = {"family": family, "ident": ident, "size": item.size, "enqueued": time.time(),
                 "attempts": 0, "next_try": 0.0, "last_error": None}
        self.outbox.mkdir(parents=True, exist_ok=True)
        write_json(path, entry)
        return entry

    async def enqueue(self, family: str, ident: str) -> None:
        name = self.entry_name(family, ident)
        if name in self.entries:
            return
        entry = await asyncio.to_thread(self.enqueue_blocking, family, ident)
        if entry is not None:
            self.entries[name] = entry
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def scan_blocking(self) -> list[tuple[str, str]]:
        """Items of every source that are neither verified remote nor queued."""
        found = []
        for family, source in self.sources.items():
            for ident in source.pending(self.layout):
                if self.entry_name(family, ident) not in self.entries:
                    found.append((family, ident))
        return found

    async def scan(self) -> int:
        added = 0
        for family, ident in await asyncio.to_thread(self.scan_blocking):
            name = self.entry_name(family, ident)
            if name in self.entries:
                continue
            entry = await asyncio.to_thread(self.enqueue_blocking, family, ident)
            if entry is not None:
                self.entries[name] = entry
                added += 1
        if added:
            self._poke()
        return added

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage tier: walking the tree failed; trying again later")
            await asyncio.sleep(self.settings.scan_interval)

    # -- dispatch --------------------------------------------------------------------
    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = time.time()
            free = self.settings.concurrency - len(self.running)
            due = sorted((e["next_try"], e["enqueued"], n) for n, e in self.entries.items()
                         if n not in self.running)
            soonest = None
            for next_try, _enq, name in due:
                if next_try > now:
                    soonest = next_try if soonest is None else min(soonest, next_try)
                    continue
                if free <= 0:
                    break
                free -= 1
                self.running.add(name)
                task = asyncio.create_task(self._work(name), name=f"tier-{name[:24]}")
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
            timeout = None if soonest is None else max(0.05, soonest - now)
            await woken(self._wake, timeout)

    async def _work(self, name: str) -> None:
        entry = self.entries[name]
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.process_blocking, name, entry)
        except Stopping:
            return
        except Exception as exc:
            entry["attempts"] = entry.get("attempts", 0) + 1
            delay = self.backoff.delay(entry["attempts"])
            entry["next_try"] = time.time() + delay
            message = explain(exc)
            entry["last_error"] = message
            self._count("failures", 1)
            if message != self.last_error or time.time() - self.last_error_at > 300:
                log.warning("storage tier: %s %s failed (attempt %d, next in %.0fs): %s", entry["family"],
                            entry["ident"], entry["attempts"], delay, message)
            self.last_error, self.last_error_at = message, time.time()
            if not isinstance(exc, (TierError, OSError)):
                log.exception("storage tier: unexpected error")
            try:
                await asyncio.to_thread(self._save, name, entry)
            except OSError:
                log.exception("storage tier: could not record the failure of %s", name)
        else:
            self.entries.pop(name, None)
        finally:
            self.running.discard(name)
            self._poke()

    def _save(self, name: str, entry: dict[str, Any]) -> None:
        path = self.outbox / f"{name}.json"
        if path.exists():
            write_json(path, entry)

    def _drop(self, name: str) -> None:
        unlink_quiet(self.outbox / f"{name}.json")

    # -- one item (blocking, in a worker thread) ---------------------------------------
    def process_blocking(self, name: str, entry: dict[str, Any]) -> None:
        source = self.sources[entry["family"]]
        item = source.item(self.layout, entry["ident"])
        if item is None:
            # Deleted meanwhile: nothing to replicate; an unfinished multipart goes too.
            for rel, mp in (entry.get("multipart") or {}).items():
                self.s3.abort_multipart(mp["key"], mp["upload_id"])
            self._drop(name)
            return
        files = {}
        for up in item.uploads:
            files[up.rel] = self._send(name, entry, up)
        record = {"bucket": self.settings.bucket, "endpoint": self.settings.endpoint or "",
                  "box": self.settings.box, "files": files, "verified": now_iso(), **item.extra}
        if item.record is not None:
            write_json(item.record, record)
        self._drop(name)
        self._count("items", 1)

    def key(self, up: Upload) -> str:
        return self.settings.shared_key(up.rel) if up.scope == "shared" else self.settings.box_key(up.rel)

    def _send(self, name: str, entry: dict[str, Any], up: Upload) -> dict[str, Any]:
        if self.stop_flag.is_set():
            raise Stopping()
        key = self.key(up)
        sha = up.sha256 or _sha256_file(up.path)
        # Content-addressed keys are asked first (another box may have sent the same bytes); a
        # box's own keys are only ever written by this box, so they are simply (re)written.
        remote = self.s3.head(key) if up.scope == "shared" else None
        if remote is not None and remote.size == up.size and remote.sha256 == sha:
            self._count("deduplicated", 1)
            return {"key": key, "size": up.size, "sha256": sha, "etag": remote.etag, "deduplicated": True}
        if remote is not None:
            raise TierError(f"{key} already holds other bytes ({remote.size} bytes, sha256 "
                            f"{remote.sha256 or 'unknown'}); it is never overwritten", "KeyHoldsOtherBytes")
        metadata = {"sha256": sha, "box": self.settings.box}
        if up.size <= self.settings.part_size:
            data = _read(up.path, 0, up.size)
            if hashlib.sha256(data).hexdigest() != sha:
                raise TierError(f"{up.rel}: the local bytes changed or are damaged (run storaged fsck)", "LocalDamage")
            answered = self.s3.put(key, data, metadata, up.content_type)
            self._count("sent", len(data))
            expected = md5_etag(data)[0]
        else:
            answered, expected = self._multipart(name, entry, up, key, sha, metadata)
        etag = self._verify(key, up.size, sha, expected, answered)
        self._count("files", 1)
        self._count("bytes", up.size)
        return {"key": key, "size": up.size, "sha256": sha, "etag": etag, "deduplicated": False}

    def _verify(self, key: str, size: int, sha: str, expected: str, answered: str) -> str:
        """The engine's ETag once the upload is verified.

        The engine answered the PUT (or the completion) with the ETag it computed from the bytes it
        received: equal to the MD5 computed here (of the parts' MD5s for multipart), the upload is
        verified.  Engines whose ETag is not an MD5 (e.g. AWS with SSE-KMS) are asked with a HEAD
        instead: same size and our sha256 metadata (the engine checked each Content-MD5 on receipt).
        """
        if answered == expected:
            return answered
        got = self.s3.head(key)
        if got is None:
            raise TierError(f"verification of {key}: the engine does not show it after the upload", "Unverified")
        trouble = []
        if got.size != size:
            trouble.append(f"size {got.size} != {size}")
        if got.sha256 != sha:
            trouble.append(f"sha256 metadata {got.sha256} != {sha}")
        if trouble:
            raise TierError(f"verification of {key} failed: {', '.join(trouble)}", "Unverified")
        return got.etag

    def _multipart(self, name: str, entry: dict[str, Any], up: Upload, key: str, sha: str,
                   metadata: dict[str, str]) -> tuple[str, str]:
        """(the engine's ETag of the completed upload, the one expected from our parts' MD5s)."""
        ps = self.settings.part_size
        count = (up.size + ps - 1) // ps
        uploads = entry.setdefault("multipart", {})
        mp = uploads.get(up.rel)
        done: dict[int, str] = {}
        if mp is not None and mp.get("size") == up.size and mp.get("part_size") == ps:
            held = self.s3.list_parts(key, mp["upload_id"])
            if held is None:
                log.info("storage tier: the engine lost the upload of %s; starting again", key)
                mp = None
            else:
                done = {n: md5 for n, md5 in mp["parts"] if held.get(n) == md5}
                self._count("resumed", 1)
                log.info("storage tier: resuming the upload of %s at %d/%d parts", key, len(done), count)
        elif mp is not None:
            self.s3.abort_multipart(mp["key"], mp["upload_id"])
            mp = None
        if mp is None:
            known = {m["upload_id"] for m in uploads.values()}
            for upload_id, initiated in self.s3.uploads_of(key):
                if upload_id not in known and time.time() - initiated > STALE_UPLOAD_AGE:
                    self.s3.abort_multipart(key, upload_id)
            upload_id = self.s3.create_multipart(key, metadata, up.content_type)
            mp = {"key": key, "upload_id": upload_id, "size": up.size, "part_size": ps, "parts": []}
            uploads[up.rel] = mp
            self._save(name, entry)
        hasher = hashlib.sha256()
        md5s = []
        with open(up.path, "rb") as fh:
            for n in range(1, count + 1):
                if self.stop_flag.is_set():
                    raise Stopping()
                data = fh.read(ps)
                hasher.update(data)
                if n in done:
                    md5s.append(done[n])
                    continue
                md5, etag = self.s3.upload_part(key, mp["upload_id"], n, data)
                self._count("sent", len(data))
                if etag and etag != md5:
                    raise TierError(f"part {n} of {key}: the engine's ETag {etag} is not our MD5 {md5}", "Unverified")
                md5s.append(md5)
                mp["parts"] = [p for p in mp["parts"] if p[0] != n] + [[n, md5]]
                self._save(name, entry)
        if hasher.hexdigest() != sha:
            self.s3.abort_multipart(key, mp["upload_id"])
            uploads.pop(up.rel, None)
            self._save(name, entry)
            raise TierError(f"{up.rel}: the local bytes changed or are damaged (run storaged fsck)", "LocalDamage")
        answered = self.s3.complete_multipart(key, mp["upload_id"], list(enumerate(md5s, 1)))
        uploads.pop(up.rel, None)
        self._save(name, entry)
        return answered, multipart_etag(md5s)

    def _count(self, what: str, n: int = 1) -> None:
        with self._count_lock:
            self.counts[what] += n

    # -- figures ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.time()
        oldest = min((e["enqueued"] for e in self.entries.values()), default=None)
        return {
            "enabled": True,
            "bucket": self.settings.bucket,
            "box": self.settings.box,
            "backlog": len(self.entries),
            "backlog_bytes": sum(e.get("size", 0) for e in self.entries.values()),
            "oldest_age": 0.0 if oldest is None else max(0.0, now - oldest),
            "uploading": len(self.running),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at or None,
            **self.counts,
        }


def _lower_priority() -> None:
    """Nice this thread (Linux schedules threads as tasks of their own) by TIER_NICE."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0)
                                                                       + TIER_NICE))
    except OSError:
        pass


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- reading back (evicted objects) ----------------------------------------------------

def evicted(layout: Layout, oid: str, meta: dict[str, Any]) -> bool:
    """True when the object's bytes are not here but verified in the tier."""
    from storaged.tier.evict import verified_remote
    from storaged.tier.sources import remote_state

    return not (layout.object_dir(oid) / meta["stored_name"]).exists() and \
        verified_remote(remote_state(layout, oid), oid, meta.get("size"))


def fetch_back_blocking(tier: "Tier", oid: str, meta: dict[str, Any]) -> bool:
    """Bring an evicted object's bytes back from the bucket (the caller holds the object's lock).

    The bytes are downloaded into ``<data>/tmp``, fsynced, must hash to the id, and are then renamed
    into the object directory: a crash leaves a temp file, never wrong bytes under the object's name.
    False when the object is not evicted.
    """
    import secrets

    from storaged.store.atomic import TMP_SUFFIX, fsync_dir
    from storaged.tier.evict import bytes_key

    layout = tier.layout
    final = layout.object_dir(oid) / meta["stored_name"]
    if final.exists() or not evicted(layout, oid, meta):
        return False
    tmp = layout.tmp / f"fetch-{oid[:16]}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        with open(tmp, "xb") as fh:
            hasher = _HashingWriter(fh)
            tier.s3.download(tier.settings.shared_key(bytes_key(oid)), hasher)
            fh.flush()
            os.fsync(fh.fileno())
        if hasher.hexdigest() != oid:
            raise TierError(f"the bucket's copy of {oid} does not hash to its id", "RemoteDamage")
        os.rename(tmp, final)
        fsync_dir(final.parent)
    finally:
        unlink_quiet(tmp)
    log.info("storage tier: fetched %s back from the bucket (%d bytes)", oid, meta.get("size", 0))
    return True


class _HashingWriter:
    def __init__(self, fh) -> None:
        self.fh = fh
        self.h = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return self.fh.write(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()
