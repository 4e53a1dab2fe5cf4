"""Where uploads in progress live; nobody else parses these paths.

::

    <data>/uploads/<upload_id>/     one tus upload (upload_id: 32 lowercase hex, random)
        info.json                   what was asked and how far it got (see service.py)
        data                        the bytes so far (absent once published as an object)
    <data>/locks/uploads/<upload_id>.lock
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from storaged.errors import BadRequest
from storaged.store.layout import Layout

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
INFO = "info.json"
DATA = "data"


def new_upload_id() -> str:
    return secrets.token_hex(16)


def check_upload_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not UPLOAD_ID_RE.match(upload_id):
        raise BadRequest("malformed upload id: expected 32 lowercase hex characters")
    return upload_id


class UploadLayout:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.root = layout.family_dir("uploads")

    def dir(self, upload_id: str) -> Path:
        return self.root / check_upload_id(upload_id)

    def info(self, upload_id: str) -> Path:
        return self.dir(upload_id) / INFO

    def data(self, upload_id: str) -> Path:
        return self.dir(upload_id) / DATA

    def lock(self, upload_id: str) -> Path:
        return self.layout.lock_for("uploads", check_upload_id(upload_id))

    def upload_ids(self) -> list[str]:
        """Every upload id present, sorted.  Blocking."""
        try:
            names = [p.name for p in self.root.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if UPLOAD_ID_RE.match(n))
