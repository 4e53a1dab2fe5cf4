"""The resumable uploads family's answers: expired tus uploads ``<data>/uploads/<id>/``.

An upload expires ``tus_expiry`` after its last write (unfinished) or after
it finished (the record of a finished one); its expiry is this family's own
rule (storaged.uploads.service).  The janitor lists only expired uploads
and removes one under the upload's lock, taken without waiting (a request
in progress keeps it).  Their age as an item is "since it expired", so the
age step's ``tus_expiry`` cut-off means "expired".
"""

from __future__ import annotations

from typing import Iterator

from storaged.config import Config
from storaged.provider import RING, Item, Kind, Provider, Scan
from storaged.store.layout import Layout
from storaged.uploads import service as tus


class UploadsProvider(Provider):
    name = "uploads"
    top_dirs = ("uploads",)

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.config = config
        # Only expired uploads are ever listed (nobody can resume them): free-space pressure may take them.
        self.kinds = (Kind("tus_uploads", "tus_expiry", 0, self.items, self.delete, RING,
                           "expired tus uploads (unfinished, or finished records)"),)

    def items(self, scan: Scan) -> Iterator[Item]:
        expiry = self.config.tus_expiry
        found = tus.all_uploads(self.layout) if scan.usage else tus.expired_uploads(self.layout, expiry, scan.now)
        for e in found:
            yield Item("tus_uploads", e.path, scan.rel(e.path), e.when - (0 if scan.usage else expiry), e.size,
                       extra={"upload": e.upload_id})

    def delete(self, scan: Scan, item: Item) -> bool:
        return tus.remove_expired(self.layout, self.config.tus_expiry, item.extra["upload"], scan.now)
