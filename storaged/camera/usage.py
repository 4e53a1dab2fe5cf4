"""Disk usage and cleanup of a camera's images (blocking: call in a thread).

Protocol
--------
Everything walks ``<data>/camera/<n>/`` itself; there is no index.  Deletion
unlinks files one by one and then removes day folders that became empty
(``rmdir`` fails harmlessly on a folder the motion supervisor has just written
into again; the supervisor recreates a day folder it finds gone).  A delete
racing with capture therefore never loses a new image and never fails.

``confidence`` of a clean is the share of the files it meant to delete that
are really gone afterwards (each is checked with ``lstat`` after its unlink):
1.0 means all of them; less means some could not be removed (permissions, a
read-only or failing disk).  With nothing to delete it is 1.0.
"""

from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path

from storaged.camera import images


def human_size(n: int) -> str:
    """Decimal units, as a person reads a disk's size: ``1.4 GB``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _walk_files(root: Path):
    """(path, DirEntry) of every file under root; directories depth-first.  Symlinks are not followed."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        yield entry
                except OSError:
                    continue


def usage(cam_dir: Path) -> tuple[int, int]:
    """(bytes, files) under the camera's folder."""
    total = count = 0
    for entry in _walk_files(cam_dir):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        count += 1
    return total, count


def _unlink_checked(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return not os.path.lexists(path)


def _remove_empty_dirs(cam_dir: Path) -> None:
    try:
        names = os.listdir(cam_dir)
    except FileNotFoundError:
        return
    for name in names:
        sub = cam_dir / name
        if sub.is_dir() and not sub.is_symlink():
            try:
                os.rmdir(sub)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                    raise


def delete_all(cam_dir: Path) -> tuple[int, int]:
    """Delete every file of the camera; (meant, gone)."""
    meant = gone = 0
    for entry in _walk_files(cam_dir):
        meant += 1
        gone += _unlink_checked(entry.path)
    _remove_empty_dirs(cam_dir)
    return meant, gone


def clean_older(cam_dir: Path, cutoff: datetime, cutoff_epoch: float) -> tuple[int, int]:
    """Delete images captured before ``cutoff`` (naive box time, from the name; the mtime
    against ``cutoff_epoch`` for files not named like images); (meant, gone)."""
    meant = gone = 0
    cutoff_name = images.key_of(cutoff) + f"-{cutoff.microsecond // 1000:03d}"
    for entry in _walk_files(cam_dir):
        when = images.time_of_name(entry.name)
        if when is not None:
            old = entry.name[:19] < cutoff_name
        else:
            try:
                old = entry.stat(follow_symlinks=False).st_mtime < cutoff_epoch
            except FileNotFoundError:
                continue
        if not old:
            continue
        meant += 1
        gone += _unlink_checked(entry.path)
    _remove_empty_dirs(cam_dir)
    return meant, gone
