"""Many produced files into the store at once (a split's clips): one group commit, each object durable."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from storaged.store.layout import Layout
from storaged.store.objects import META, ObjectStore, verify_object


def _files(where: Path, contents: list[bytes]) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(contents):
        path = where / f"clip-{i}.mp4"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_a_batch_answers_in_order_and_the_same_bytes_are_one_object(data_dir):
    layout = Layout(data_dir)
    layout.ensure()
    store = ObjectStore(layout, max_size=1 << 30)
    existing = store.put_file_blocking(_files(layout.tmp / "a", [b"already here" * 100])[0], "old.mp4")
    contents = [b"first" * 1000, b"second" * 1000, b"first" * 1000, b"already here" * 100, b""]
    paths = _files(layout.tmp / "b", contents)
    answers = store.put_files_blocking([(p, f"race-{i}.mp4", None) for i, p in enumerate(paths)])
    assert [a["file_id"] for a in answers] == [hashlib.sha256(c).hexdigest() for c in contents]
    assert [a["deduplicated"] for a in answers] == [False, False, True, True, False]
    assert answers[3]["name"] == existing["name"] == "old.mp4"
    assert [a["size"] for a in answers] == [len(c) for c in contents]
    for answer in answers:
        assert verify_object(layout.object_dir(answer["file_id"]), answer["file_id"])[1] is None
    # The sources were moved in (or dropped as duplicates); no temp file is left behind.
    assert not any(p.exists() for p in paths)
    assert not [n for n in os.listdir(layout.tmp) if n.startswith(("upload-", ".obj-"))]


def test_each_object_is_durable_before_the_batch_returns(data_dir, monkeypatch):
    """Recorded fsyncs and renames: each object's bytes, meta.json and directory are fsynced before
    the directory is renamed to its final name, and its parent directory is fsynced after that."""
    layout = Layout(data_dir)
    layout.ensure()
    store = ObjectStore(layout, max_size=1 << 30)
    paths = _files(layout.tmp / "in", [f"clip {i}".encode() * 5000 for i in range(12)])
    events: list[tuple] = []
    lock = threading.Lock()
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        st = os.fstat(fd)
        with lock:
            events.append(("fsync-start", (st.st_dev, st.st_ino)))
        real_fsync(fd)
        with lock:
            events.append(("fsync-end", (st.st_dev, st.st_ino)))

    def rename(src, dst, *args, **kwargs):
        with lock:
            events.append(("rename-start", os.fspath(dst)))
        real_rename(src, dst, *args, **kwargs)
        with lock:
            events.append(("rename-end", os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    answers = store.put_files_blocking([(p, p.name, None) for p in paths])
    monkeypatch.undo()

    def inode(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def last(kind: str, what) -> int:
        return max(i for i, e in enumerate(events) if e == (kind, what))

    for answer in answers:
        final = layout.object_dir(answer["file_id"])
        placed = events.index(("rename-start", os.fspath(final)))
        placed_end = events.index(("rename-end", os.fspath(final)))
        for part in (final / answer["stored_name"], final / META, final):
            assert last("fsync-end", inode(part)) < placed, (answer["file_id"], part)
        parent_syncs = [i for i, e in enumerate(events) if e == ("fsync-start", inode(final.parent))]
        assert any(i > placed_end for i in parent_syncs), answer["file_id"]
