"""Eviction: the janitor's first tier when a storage tier is configured.

Protocol
--------
An object whose ``remote.json`` records its bytes verified in the bucket
(same sha256 = its id, same size as ``meta.json`` says) may lose its local
bytes under disk pressure; its directory keeps ``meta.json``,
``remote.json``, the ``the_file`` link (dangling while evicted) and its
analyses.  Never evicted: an object without such a record (not yet verified
remote), a pinned one, one a queued or running job declared as its input
(storaged.jobs.queue; an analysis declares its object).  The bytes are unlinked under the
object's lock (taken without waiting: a busy object is skipped this pass),
after the record and the pin are read again under it.  An evicted object is
served from the bucket (read-through) and fetched back before an analysis.
Blocking, like every janitor kind.
"""

from __future__ import annotations

import os
from typing import Iterator

from storaged.config import Config
from storaged.files.pins import PIN
from storaged.jobs.queue import active_inputs
from storaged.provider import SPARE, Item, Kind, Provider, Scan
from storaged.store.layout import Layout
from storaged.store.atomic import fsync_dir, read_json, sync_lock, unlink_quiet
from storaged.store.objects import META
from storaged.tier.sources import remote_state

KIND_NAME = "remote_copies"


def bytes_key(oid: str) -> str:
    return f"{oid[:2]}/{oid[2:]}/the_file"


def verified_remote(state: dict | None, oid: str, size: int) -> bool:
    if not state:
        return False
    rec = (state.get("files") or {}).get(bytes_key(oid))
    return isinstance(rec, dict) and rec.get("sha256") == oid and rec.get("size") == size


def evictable(env: Scan) -> Iterator[Item]:
    for oid in env.layout.object_ids():
        od = env.layout.object_dir(oid)
        if oid in env.refs.inputs or os.path.exists(od / PIN):
            continue
        state = remote_state(env.layout, oid)
        if state is None:
            continue
        try:
            meta = read_json(od / META)
            st = os.stat(od / meta["stored_name"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not verified_remote(state, oid, st.st_size):
            continue
        yield Item(KIND_NAME, od / meta["stored_name"], env.rel(od), st.st_mtime, st.st_size,
                   extra={"object": oid})


def evict(env: Scan, item: Item) -> bool:
    oid = item.extra["object"]
    od = env.layout.object_dir(oid)
    with sync_lock(env.layout.object_lock(oid), timeout=0):
        if not item.path.exists() or (od / PIN).exists():
            return False
        if any(used == oid for used, _who in active_inputs(env.layout)):
            return False
        if not verified_remote(remote_state(env.layout, oid), oid, os.stat(item.path).st_size):
            return False
        unlink_quiet(item.path)
        fsync_dir(od)
    return True


KIND = Kind(KIND_NAME, "", -1, evictable, evict, SPARE, "local bytes of objects verified in the storage tier")


class TierProvider(Provider):
    """The tier's part in retention and fsck: it owns ``<data>/tier/`` (its outbox and state) and, when
    it evicts, its evictable local copies are the janitor's first tier under space pressure."""

    name = "tier"
    top_dirs = ("tier",)

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.kinds = (KIND,) if config.tier_bucket and config.tier_evict else ()


def providers_for(layout: Layout, config: Config) -> list[Provider]:
    """The tier's provider for these settings (it claims its directory even when the tier is off)."""
    return [TierProvider(layout, config)]
