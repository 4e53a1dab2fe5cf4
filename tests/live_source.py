"""A camera-like live source for tests and benchmarks: ffmpeg publishing MPEG-TS in real time.

UDP (``udp://127.0.0.1:<port>?pkt_size=1316``) behaves like a camera multicast:
the publisher does not care whether anyone listens, and it can be killed and
restarted on the same port to simulate a source that drops out.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import free_port


def free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveSource:
    def __init__(self, port: int | None = None, size: str = "160x120", fps: int = 25) -> None:
        self.port = port or free_udp_port()
        self.size = size
        self.fps = fps
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def start(self) -> "LiveSource":
        self.proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
             "-f", "lavfi", "-i", f"testsrc2=size={self.size}:rate={self.fps}",
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
             "-g", str(self.fps), "-keyint_min", str(self.fps), "-sc_threshold", "0",
             "-f", "mpegts", f"{self.url}?pkt_size=1316"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


def processes_under(path: Path) -> list[int]:
    """Pids of processes whose command line mentions ``path`` (the test's own data dir)."""
    needle = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != b"Z":
            pids.append(int(entry))
    return pids


def kill_processes_under(path: Path) -> list[int]:
    pids = processes_under(path)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


__all__ = ["LiveSource", "free_port", "free_udp_port", "processes_under", "kill_processes_under"]
