"""A helper whose only reader is the daemon (the snapshot check) ends with a SIGKILLed daemon; workers and
segmenters, which the next start adopts, are proven to outlive it elsewhere (test_crash, the crash loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from storaged.supervise.process import proc_stat

_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid())],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""

_HELPER = """
import sys, time
from storaged.supervise.process import die_with_parent
die_with_parent(int(sys.argv[1]))
print("armed", flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")  # a zombie waiting for init is gone too


def test_a_helper_dies_with_its_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _HELPER], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(parent.stdout.readline())
        assert not _gone(helper)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while not _gone(helper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(helper), "the helper outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_a_helper_whose_parent_is_already_gone_does_not_start():
    """The kernel only signals a death after the request: a parent gone before it means exit now."""
    ran = subprocess.run([sys.executable, "-c", _HELPER, "1"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and "armed" not in ran.stdout
