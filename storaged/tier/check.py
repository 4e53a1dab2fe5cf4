"""``storaged fsck --remote``: the bucket's copies of the objects this box recorded as verified.

Every object with a ``remote.json`` is asked for with a HEAD (size, ``sha256``
metadata and ETag as recorded); ``--remote-sample N`` also downloads N of
them, chosen at random, and hashes the bytes.  Read-only: nothing is changed
locally or remotely, so it is safe beside a live daemon.
"""

from __future__ import annotations

import hashlib
import random
from typing import TextIO

from storaged.config import Config
from storaged.store.layout import Layout
from storaged.tier import settings as tier_settings
from storaged.tier.client import S3, TierError
from storaged.tier.evict import bytes_key
from storaged.tier.sources import remote_state


def check_remote(layout: Layout, config: Config, out: TextIO, sample: int = 0) -> int:
    """Number of problems found (printed one a line)."""
    settings = tier_settings.load(config)
    s3 = S3(settings)
    recorded = []
    for oid in layout.object_ids():
        state = remote_state(layout, oid)
        rec = (state or {}).get("files", {}).get(bytes_key(oid)) if state else None
        if isinstance(rec, dict):
            recorded.append((oid, rec))
    problems = 0
    for oid, rec in recorded:
        try:
            got = s3.head(rec["key"])
        except TierError as exc:
            print(f"remote copy {rec['key']}: cannot be checked: {exc}", file=out)
            problems += 1
            continue
        trouble = []
        if got is None:
            trouble.append("missing from the bucket")
        else:
            if got.size != rec.get("size"):
                trouble.append(f"size {got.size}, recorded {rec.get('size')}")
            if got.sha256 != oid:
                trouble.append(f"sha256 metadata {got.sha256}")
            if rec.get("etag") and got.etag != rec["etag"]:
                trouble.append(f"ETag {got.etag}, recorded {rec['etag']}")
        if trouble:
            problems += 1
            print(f"remote copy {rec['key']}: {', '.join(trouble)}", file=out)
    for oid, rec in random.sample(recorded, min(sample, len(recorded))):
        h = hashlib.sha256()
        try:
            _answer, body = s3.get(rec["key"])
            try:
                while chunk := body.read(1 << 20):
                    h.update(chunk)
            finally:
                body.close()
        except (TierError, OSError) as exc:
            print(f"remote copy {rec['key']}: cannot be read: {exc}", file=out)
            problems += 1
            continue
        if h.hexdigest() != oid:
            problems += 1
            print(f"remote copy {rec['key']}: its bytes hash to {h.hexdigest()}, not to the id", file=out)
    print(f"fsck --remote: {len(recorded)} remote copies checked, {min(sample, len(recorded))} re-hashed, "
          f"{problems} problem(s)", file=out)
    return problems
