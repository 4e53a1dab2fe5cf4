"""``storaged restore --from-remote``: rebuild a box's tree from the bucket after its disk is lost.

Protocol
--------
Everything under ``<prefix>boxes/<box>/`` is listed (``--box`` names another
box than ``tier_box``).  An object's ``meta.json`` becomes an object directory
(``meta.json``, the ``the_file`` link and a ``remote.json``) once a HEAD of its
content-addressed key shows the size and sha256 the meta names; its bytes stay
in the bucket (evicted: downloads read through, analyses fetch them back)
unless ``--bytes`` is given, in which case they are downloaded and must hash
to the id.  An object directory is assembled in ``<data>/tmp`` and renamed into
place in one step, like an upload.  Every other file (records, stream state,
segment lists and segments, camera images, exports, finished analyses) is
written atomically at its path.  Nothing that exists locally is overwritten,
so a restore can be run again after an interruption, and beside a live daemon
of the same data root only when that daemon has not been started yet (the
daemon's in-memory indexes are built at start).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TextIO

from storaged.config import Config
from storaged.store.atomic import TMP_SUFFIX, fsync_dir, write_bytes, write_json
from storaged.store.layout import RESERVED_TOP, Layout
from storaged.store.objects import META, THE_FILE
from storaged.tier import settings as tier_settings
from storaged.tier.client import S3, TierError
from storaged.tier.evict import bytes_key
from storaged.tier.service import now_iso
from storaged.tier.sources import REMOTE, TreeFiles

_OBJECT_META = re.compile(r"([0-9a-f]{2})/([0-9a-f]{62})/meta\.json")
_SAFE_REL = re.compile(r"[A-Za-z0-9._~+-]+(/[A-Za-z0-9._~+-]+)*")


def restore(config: Config, out: TextIO, *, box: str | None = None, with_bytes: bool = False) -> int:
    settings = tier_settings.load(config)
    s3 = S3(settings)
    layout = Layout(config.data_dir)
    layout.ensure()
    prefix = settings.box_key("", box)
    restored = objects = skipped = 0
    problems = 0
    keys = [key for key, _size in s3.list_keys(prefix)]
    # Objects first: a file inside an object directory (a finished analysis) needs the object there.
    keys.sort(key=lambda k: (not _OBJECT_META.fullmatch(k[len(prefix):]), k))
    for key in keys:
        rel = key[len(prefix):]
        if not _SAFE_REL.fullmatch(rel) or ".." in rel.split("/") or rel.split("/")[0] in RESERVED_TOP | {"tier"}:
            print(f"restore: skipped unsafe key {key}", file=out)
            problems += 1
            continue
        try:
            m = _OBJECT_META.fullmatch(rel)
            if m:
                done = _restore_object(layout, settings, s3, m.group(1) + m.group(2), key, with_bytes)
                objects += done
            else:
                done = _restore_file(layout, s3, key, rel, settings)
            restored += done
            skipped += not done
        except (TierError, OSError, ValueError) as exc:
            print(f"restore: {rel}: {exc}", file=out)
            problems += 1
    print(f"restore: {restored} item(s) restored ({objects} object(s){'' if with_bytes else ', bytes left in the bucket'}),"
          f" {skipped} already here, {problems} problem(s)", file=out)
    return 1 if problems else 0


def _restore_file(layout: Layout, s3: S3, key: str, rel: str, settings) -> bool:
    path = layout.root / rel
    if path.exists():
        return False
    data = s3.get_bytes(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
    st = os.stat(path)
    ledger = TreeFiles.ledger(layout, rel)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    write_json(ledger, {"bucket": settings.bucket, "box": settings.box, "restored": now_iso(),
                        "files": {rel: {"key": key, "size": st.st_size,
                                        "sha256": hashlib.sha256(data).hexdigest()}},
                        "version": [st.st_size, st.st_mtime_ns]})
    return True


def _restore_object(layout: Layout, settings, s3: S3, oid: str, meta_key: str, with_bytes: bool) -> bool:
    final = layout.object_dir(oid)
    if final.exists():
        return False
    raw = s3.get_bytes(meta_key)
    import json

    meta = json.loads(raw)
    stored = meta.get("stored_name") if isinstance(meta, dict) else None
    if meta.get("file_id") != oid or not isinstance(stored, str) or "/" in stored or stored in ("", ".", ".."):
        raise ValueError("meta.json does not describe this object")
    data_key = settings.shared_key(bytes_key(oid))
    head = s3.head(data_key)
    if head is None:
        raise TierError(f"{data_key} is not in the bucket", "NoSuchKey")
    if head.size != meta.get("size") or head.sha256 != oid:
        raise TierError(f"{data_key} does not hold the object's bytes (size {head.size}, sha256 {head.sha256})",
                        "Mismatch")
    stage = layout.tmp / f".restore-{oid[:16]}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    stage.mkdir()
    try:
        write_bytes(stage / META, raw)
        os.symlink(stored, stage / THE_FILE)
        if with_bytes:
            h = hashlib.sha256()
            with open(stage / stored, "xb") as fh:
                _answer, body = s3.get(data_key)
                try:
                    while chunk := body.read(1 << 20):
                        h.update(chunk)
                        fh.write(chunk)
                finally:
                    body.close()
                fh.flush()
                os.fsync(fh.fileno())
            if h.hexdigest() != oid:
                raise TierError(f"{data_key}: the bucket's bytes do not hash to the id", "RemoteDamage")
        write_json(stage / REMOTE, {"bucket": settings.bucket, "endpoint": settings.endpoint or "",
                                    "box": settings.box, "restored": now_iso(), "verified": now_iso(),
                                    "files": {bytes_key(oid): {"key": data_key, "size": head.size, "sha256": oid,
                                                               "etag": head.etag},
                                              f"{oid[:2]}/{oid[2:]}/{META}": {"key": meta_key, "size": len(raw),
                                                                             "sha256": hashlib.sha256(raw).hexdigest()}}})
        fsync_dir(stage)
        final.parent.mkdir(exist_ok=True)
        os.rename(stage, final)
        fsync_dir(final.parent)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return True


def _args(parser) -> None:
    from storaged.config import add_bool_flag

    add_bool_flag(parser, "--from-remote", "from_remote", "restore from the storage tier's bucket (required)",
                  default=False)
    parser.add_argument("--box", default=None, help="the box whose data to restore (default: tier_box)")
    add_bool_flag(parser, "--bytes", "with_bytes", "also download the objects' bytes (default: leave them in the "
                  "bucket; downloads read through)", default=False)


def _run(config: Config, args) -> int:
    import sys

    from storaged.config import ConfigError

    if not args.from_remote:
        print("storaged restore: say where from: --from-remote", file=sys.stderr)
        return 2
    try:
        return restore(config, sys.stdout, box=args.box, with_bytes=args.with_bytes)
    except ConfigError as exc:
        print(f"storaged restore: {exc}", file=sys.stderr)
        return 2
    except TierError as exc:
        print(f"storaged restore: {exc}", file=sys.stderr)
        return 3


COMMANDS = {
    "restore": ("rebuild the tree (meta, records, recordings) from the storage tier: --from-remote [--bytes]",
                _args, _run),
}
