"""Shared helpers for the benchmarks in bench/.

Every bench runs on loopback only, in a temp directory on a disk-backed
filesystem (never tmpfs, so fsync costs what it costs on the box), stops
every process it started and removes its temp files on the way out (also on
Ctrl-C, SIGTERM or its own time limit), and writes its figures into one
``## <name>`` section of BENCHMARKS.md, leaving the other sections alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
INTRO = """# Benchmarks

Figures written by the scripts in `bench/`, each under its own section with the
exact command that produced it.  Every bench runs storaged and its yardstick
side by side on the same machine, on loopback, and cleans up after itself.

The machine these figures come from has **2 cores** and is **shared**: other
work (test suites, other benches) was running at the same time, so absolute
figures are noisy and ratios are the thing to read.  Sections say at which
scale they were run; the full-scale command is given next to each.
"""

MiB = 1024 * 1024
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.I)


class BenchTimeout(Exception):
    pass


def parse_size(text: str) -> int:
    """``"1G"`` → 1073741824 (K/M/G/T are powers of 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 256M, 1G)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def mb_s(nbytes: float, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second)."""
    return nbytes / seconds / 1e6 if seconds > 0 else math.nan


# -- temp dirs ------------------------------------------------------------------


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    path = Path(path).resolve()
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


@contextlib.contextmanager
def disk_tempdir(prefix: str, keep_on_error: bool = False) -> Iterator[Path]:
    """A temp dir on a disk-backed filesystem (not tmpfs), removed on exit.

    ``keep_on_error``: an exception leaving the block keeps the directory (its path goes to
    stderr), so the logs of a run that found something can still be read."""
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp"), ROOT / "bench"]
    base = next((c for c in candidates if c.is_dir() and os.access(c, os.W_OK)
                 and _fs_type(c) not in ("tmpfs", "ramfs")), ROOT / "bench")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    except BaseException:
        if keep_on_error:
            print(f"kept for diagnosis: {path}", file=sys.stderr)
            path = None
        raise
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def write_random_file(path: Path, size: int, block: int = 8 * MiB) -> None:
    """``size`` random bytes, written and fsynced (so generating it does not pollute the first run)."""
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(block, left)
            fh.write(os.urandom(n))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())


# -- processes ------------------------------------------------------------------


class Processes:
    """Processes this bench started; ``stop_all`` stops each of them by its own pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: Sequence[str], log_path: Path | None = None, **kwargs) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    **kwargs)
        finally:
            if log_path:
                out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in list(self.procs)[::-1]:
            with contextlib.suppress(Exception):
                self.stop(proc)


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout}s")
        time.sleep(0.05)


def start_daemon(procs: Processes, data_dir: Path, log_path: Path, *extra: str,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real ``storaged serve`` on a free loopback port; answers (process, base url) once /healthz is up."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = procs.start([sys.executable, "-m", "storaged", "serve", "--host", "127.0.0.1", "--port", str(port),
                        "--data-dir", str(data_dir), *extra], log_path, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc, log=log_path)
    return proc, url


def can_install() -> list[str] | None:
    """The prefix to run apt-get as root (``[]`` when we are root, ``["sudo", "-n"]``), or None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_tool(binary: str, package: str, extra_paths: Sequence[str] = ("/usr/sbin", "/sbin")) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` with apt-get when it is missing (root/sudo only)."""
    def find() -> str | None:
        return shutil.which(binary) or next(
            (str(Path(d) / binary) for d in extra_paths if (Path(d) / binary).is_file()), None)

    if found := find():
        return found
    prefix = can_install()
    if prefix is None or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {package} (apt-get) for {binary} ...", file=sys.stderr)
    cmd = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, timeout=600, stdin=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update"], env=env, timeout=600, stdin=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, timeout=600, stdin=subprocess.DEVNULL)
    return find()


def static_nginx_config(work: Path, port: int, root: Path) -> Path:
    """An nginx serving ``root`` with sendfile on a loopback port (the yardstick of file benches)."""
    conf = work / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {work}/ngx-body;
    proxy_temp_path {work}/ngx-proxy;
    fastcgi_temp_path {work}/ngx-fastcgi;
    uwsgi_temp_path {work}/ngx-uwsgi;
    scgi_temp_path {work}/ngx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /healthz {{ return 200 "ok"; }}
    }}
}}
""")
    return conf


def start_nginx(procs: Processes, nginx: str, work: Path, conf: Path, port: int) -> tuple[subprocess.Popen, str]:
    """nginx with ``conf`` (listening on ``port``), once its /healthz answers; answers (process, its version)."""
    proc = procs.start([nginx, "-e", str(work / "nginx-error.log"), "-p", str(work), "-c", str(conf)],
                       work / "stdout.log")
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=work / "nginx-error.log")
    return proc, subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()


# -- bounded runs ---------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise BenchTimeout in the main thread after ``seconds``; SIGTERM/SIGHUP become SystemExit.

    Either way the ``finally`` blocks of the bench run, so its processes are
    stopped and its temp files removed.
    """
    def on_alarm(_sig, _frame):
        raise BenchTimeout(f"the bench ran out of its time limit ({seconds:.0f}s)")

    def on_term(sig, _frame):
        raise SystemExit(128 + sig)

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGALRM, on_alarm), (signal.SIGTERM, on_term),
                                               (signal.SIGHUP, on_term))}
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in old.items():
            signal.signal(s, h)


def _write_record_files(job: tuple[str, list[dict]]) -> int:
    from storaged.store.atomic import dumps
    directory, records = job
    for record in records:
        with open(os.path.join(directory, f"{record['id']}.json"), "wb") as fh:
            fh.write(dumps(record))
    return len(records)


def write_record_files(directory: Path, records: Sequence[dict], processes: int | None = None,
                       chunk: int = 5000) -> None:
    """Record files exactly as the daemon writes them (``atomic.dumps``), from several processes.

    No temp file, no fsync: a bench's data need not survive a crash, and a
    million files must take minutes, not an hour, on a shared 2-core machine.
    """
    import multiprocessing

    directory.mkdir(parents=True, exist_ok=True)
    jobs = ((str(directory), list(records[i:i + chunk])) for i in range(0, len(records), chunk))
    with multiprocessing.get_context("fork").Pool(processes or max(2, os.cpu_count() or 2)) as pool:
        for _ in pool.imap_unordered(_write_record_files, jobs):
            pass


def page_cache_dropped() -> bool:
    """Drop the page cache (needs root); False when this machine does not allow it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def machine_note() -> str:
    """One line about the machine at the time of the run: cores and load."""
    try:
        load = os.getloadavg()
        load_s = f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) when it finished"
    except OSError:
        load_s = "load unknown"
    return f"{os.cpu_count()} cores, shared with other work; {load_s}"


# -- BENCHMARKS.md ----------------------------------------------------------------


NOTES = "### Analysis"


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the ``## <heading>`` section of BENCHMARKS.md by ``body`` (or append it).

    ``body`` is the text under the heading.  A ``### Analysis`` subsection
    written by hand at the end of the old section (the explanation of the
    figures) is kept.  Other sections are left byte for byte; the file is
    created with a short intro if it is missing.  An flock on the file keeps
    concurrent benches from losing each other's sections.
    """
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read() or INTRO + "\n"
        pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
        old = pattern.search(text)
        notes = ""
        if old and (at := old.group(0).find(f"\n{NOTES}\n")) >= 0:
            notes = old.group(0)[at:].strip() + "\n\n"
        block = f"## {heading}\n\n{body.strip()}\n\n{notes}"
        if old:
            text = pattern.sub(lambda _m: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block
        text = text.rstrip("\n") + "\n"
        fh.seek(0)
        fh.truncate()
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def publish(heading: str, text: str, *, no_write: bool) -> None:
    """Print a bench's section and, unless ``no_write``, put it into BENCHMARKS.md."""
    print(text)
    if not no_write:
        write_section(heading, text)
        print(f"\nwritten to BENCHMARKS.md (## {heading})", file=sys.stderr)
