"""`storaged serve` that cannot start says why in one line and exits non-zero (the real command, a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def serve(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_port_in_use(data_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--data-dir", str(data_dir), "--port", str(port))
    assert proc.returncode == 1
    assert one_line(proc) == (f"storaged: cannot start: cannot listen on 127.0.0.1:{port}: "
                              "Address already in use (EADDRINUSE)")
    assert not (data_dir / "locks").exists(), "a daemon that could not listen set up the data root anyway"


def test_a_data_root_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = serve("--data-dir", str(blocker / "data"), "--port", "0")
    assert proc.returncode == 1
    assert one_line(proc) == (f"storaged: cannot start: the data root {blocker / 'data'} is not writable: "
                              "Not a directory (ENOTDIR)")


def test_ffmpeg_missing(data_dir, tmp_path):
    missing = tmp_path / "no-such-ffmpeg"
    proc = serve("--data-dir", str(data_dir), "--port", "0", env={"STORAGED_FFMPEG_BIN": str(missing)})
    assert proc.returncode == 1
    assert one_line(proc) == (f"storaged: cannot start: {missing} not found: install ffmpeg >= 5.1 "
                              "(Debian: apt-get install ffmpeg)")


@pytest.mark.parametrize("version", ["4.4.2-0ubuntu0.22.04.1", "5.0.3"])
def test_ffmpeg_too_old(data_dir, tmp_path, version):
    old = tmp_path / "ffmpeg"
    old.write_text(f"#!/bin/sh\necho 'ffmpeg version {version} Copyright (c) 2000-2022 the FFmpeg developers'\n")
    old.chmod(0o755)
    proc = serve("--data-dir", str(data_dir), "--port", "0", env={"STORAGED_FFMPEG_BIN": str(old)})
    assert proc.returncode == 1
    major_minor = ".".join(version.split(".")[:2])
    assert one_line(proc) == (f"storaged: cannot start: {old} {major_minor} is too old: storaged needs ffmpeg >= 5.1 "
                              f"(ffmpeg version {version} Copyright (c) 2000-2022 the FFmpeg developers)")


def test_the_check_takes_the_installed_ffmpeg():
    from storaged.supervise.ffmpeg import check_tools
    lines = check_tools()
    assert len(lines) == 2 and lines[0].startswith("ffmpeg version") and lines[1].startswith("ffprobe version")


@pytest.mark.parametrize("args, says", [
    (("--timezone", "Mars/Base"), "storaged: bad setting: unknown time zone 'Mars/Base'"),
    (("--cameras", "garbage"), "storaged: bad setting: cameras: expected N=URL, got 'garbage'"),
    (("--port", "eighty"), "storaged: setting port:"),
    (("--health-min-free", "lots"), "storaged: setting health_min_free: not a size: 'lots'"),
])
def test_a_bad_setting(data_dir, args, says):
    proc = serve("--data-dir", str(data_dir), "--port", "0", *args)
    assert proc.returncode == 2
    assert one_line(proc).startswith(says), proc.stderr
