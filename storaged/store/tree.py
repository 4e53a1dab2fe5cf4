"""Directory walking shared by the families' providers: entries that vanish meanwhile are skipped.

Everything here is blocking (scandir, stat): call it from a thread or the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator


def subdirs(path: Path) -> Iterator[Path]:
    """The subdirectories of ``path`` (not following symlinks), by name."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in sorted(entries, key=lambda e: e.name):
        try:
            if e.is_dir(follow_symlinks=False):
                yield Path(e.path)
        except OSError:
            continue


def files(path: Path) -> Iterator[os.DirEntry]:
    """The regular files (and symlinks) directly in ``path``, in directory order."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                yield e
        except OSError:
            continue


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``; symlinks counted, not followed."""
    total = count = 0
    for dirpath, _dirs, names in os.walk(path):
        for f in names:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
            count += 1
    return total, count


def rmdir_quiet(path: Path) -> bool:
    """Remove ``path`` if it is an empty directory; answers whether it did."""
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True
