"""Small stored objects held in memory, for downloads at memory speed.

Protocol
--------
*Why it is always correct.*  An object's bytes never change under its id
(content addressing), so an entry needs no revalidation.  Bytes enter the
cache only after their SHA-256 has been checked against the id (in a worker
thread, on the first download), so a copy damaged on disk is never cached;
a delete or a repair of the object drops its entry (``forget``, called by
:class:`~storaged.store.objects.ObjectStore` while it holds the object's lock).

*Bounds.*  Objects up to ``max_object`` bytes, ``budget`` bytes in all, least
recently served evicted first.  ``budget`` 0 turns the cache off.

*Readers and writers.*  The event loop reads and fills it; ``forget`` may run
in a worker thread (a dict pop, atomic under the GIL).  A fill racing a delete
is the one hazard: ``forget`` bumps a generation that a fill started earlier
must still see unchanged, or it drops its bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SmallObject:
    data: bytes
    mtime: int  # whole seconds, for Last-Modified
    content_type: str
    extra: dict = field(default_factory=dict)  # what the HTTP layer derives once (headers)


class SmallObjects:
    def __init__(self, budget: int, max_object: int) -> None:
        self.budget = budget
        self.max_object = max_object if budget > 0 else 0
        self.held = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, SmallObject] = OrderedDict()
        self._generation = 0

    def get(self, oid: str) -> SmallObject | None:
        entry = self._entries.get(oid)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(oid)
        self.hits += 1
        return entry

    def fits(self, size: int) -> bool:
        return 0 <= size <= self.max_object

    def generation(self) -> int:
        return self._generation

    def put(self, oid: str, entry: SmallObject, generation: int) -> None:
        if generation != self._generation or not self.fits(len(entry.data)) or oid in self._entries:
            return
        self._entries[oid] = entry
        self.held += len(entry.data)
        while self.held > self.budget and self._entries:
            _, old = self._entries.popitem(last=False)
            self.held -= len(old.data)

    def forget(self, oid: str) -> None:
        self._generation += 1
        entry = self._entries.pop(oid, None)
        if entry is not None:
            self.held -= len(entry.data)


def read_verified(path: Path, oid: str, limit: int) -> tuple[bytes, int] | None:
    """The bytes of ``path`` and its mtime if they hash to ``oid`` (blocking: call in a thread)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size > limit:
            return None
        data = fh.read(limit + 1)
    if len(data) != st.st_size or hashlib.sha256(data).hexdigest() != oid:
        return None
    return data, int(st.st_mtime)
