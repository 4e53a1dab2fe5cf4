"""The daemon as systemd runs it: readiness notification, journald-friendly logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys

import aiohttp

from tests.helpers import Daemon, wait_until_sync


def test_ready_is_notified_and_logs_carry_priorities(tmp_path):
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        (tmp_path / "data").mkdir()
        d = Daemon(tmp_path / "data", env={"NOTIFY_SOCKET": str(sock_path), "JOURNAL_STREAM": "8:1234"}).start()
        try:
            assert b"READY=1" in sock.recv(4096)
        finally:
            assert d.stop() == 0
        assert b"STOPPING=1" in sock.recv(4096)
    lines = [line for line in d.log_path.read_text().splitlines() if line]
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines), lines[:3]
    assert any(line.startswith("<6>storaged: storaged") for line in lines)


async def test_sigterm_lets_an_inflight_upload_finish(daemon):
    d = daemon()
    body = os.urandom(3 << 20)
    sent_half = asyncio.Event()

    async def slowly():
        for i, off in enumerate(range(0, len(body), 256 << 10)):
            if i == 6:
                sent_half.set()
                await asyncio.sleep(0.5)  # let SIGTERM land while the body is still streaming
            yield body[off:off + (256 << 10)]

    async with aiohttp.ClientSession() as session:
        async def upload():
            async with session.post(f"{d.url}/upload", params={"name": "late.bin"}, data=slowly()) as resp:
                return resp.status, await resp.json()

        task = asyncio.create_task(upload())
        await sent_half.wait()
        d.proc.send_signal(signal.SIGTERM)
        status, out = await task
    assert status == 200 and out["file_id"] == hashlib.sha256(body).hexdigest()
    assert await asyncio.to_thread(d.proc.wait, 30) == 0
    obj = d.data_dir / out["file_id"][:2] / out["file_id"][2:]
    assert (obj / "meta.json").exists()
    assert os.listdir(d.data_dir / "tmp") == []


def test_python_dash_m_and_console_script_agree(tmp_path):
    out = subprocess.run([sys.executable, "-m", "storaged", "--version"], capture_output=True, text=True, check=True)
    script = os.path.join(os.path.dirname(sys.executable), "storaged")
    out2 = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == out2.stdout and out.stdout.startswith("storaged ")


def test_bad_setting_exits_2_with_a_message(tmp_path):
    done = subprocess.run([sys.executable, "-m", "storaged", "serve", "--port", "http"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "port" in done.stderr


def test_temp_files_older_than_the_limit_are_swept_at_start(tmp_path):
    data = tmp_path / "data"
    (data / "tmp").mkdir(parents=True)
    old = data / "tmp" / "upload-old.tmp"
    young = data / "tmp" / "upload-young.tmp"
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    os.utime(old, (1, 1))
    d = Daemon(data).start()
    try:
        wait_until_sync(lambda: not old.exists(), what="old temp swept")
        assert young.exists()
    finally:
        d.stop()
