"""``python -m storaged.jobs.launch LOG -- ARGV…``: start ARGV fully detached and print its pid.

A double fork: this process forks a child that becomes a session leader
(so the worker and its ffmpeg form one process group that cancel can signal
at once), sends its output to LOG and execs ARGV; this process prints the
child's pid and exits at once.  The worker is therefore nobody's child in
the daemon: it survives daemon restarts, is reaped by init, and fresh and
adopted workers are watched the same way (by pid + boot id + start time).

Kept free of heavy imports so that starting a job costs one fork-exec.
"""

import os
import sys


def main() -> int:
    log_path, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        print("usage: python -m storaged.jobs.launch LOG -- ARGV...", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        return 0
    try:
        os.setsid()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.closerange(3, 65536)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


if __name__ == "__main__":
    sys.exit(main())
