"""Helpers for the operations tests: a small filesystem of its own, planted recordings and images."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str = "32m") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30)
    return path


def umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], timeout=30)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_segment(data: Path, stream: int, run: int, index: int, size: int, mtime: float) -> Path:
    """A recorded segment as the segmenter lays it out, with its list line."""
    opened = time.strftime("%Y%m%dT%H%M%S", time.gmtime(mtime))
    seg_dir = data / "streams" / str(stream) / "segments"
    path = seg_dir / f"r{run:06d}" / f"r{run:06d}-{opened}Z.ts"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    os.utime(path, (mtime, mtime))
    with open(seg_dir / f"r{run:06d}.csv", "a") as fh:
        fh.write(f"{path.name},{index * 10.0:.6f},{index * 10.0 + 10:.6f}\n")
    return path


def write_image(data: Path, camera: int, when: float, size: int = 4096) -> Path:
    t = time.localtime(when)
    path = data / "camera" / str(camera) / time.strftime("%Y%m%d", t) / (
        time.strftime("%Y%m%d-%H%M%S", t) + f"-{int(when * 1000) % 1000:03d}.jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8" + os.urandom(size) + b"\xff\xd9")
    os.utime(path, (when, when))
    return path


def backdate(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 32 MiB tmpfs for the space-pressure tests, unmounted afterwards."""
    mnt = mount_tmpfs(tmp_path / "fs", "32m")
    try:
        yield mnt
    finally:
        umount(mnt)
