"""A real one-node OpenStack Swift with its S3 API, on loopback, for tests and benches.

Everything lives under one directory: ``etc/`` (swift.conf, the three rings,
the four server configs), ``srv/d1`` (the one device) and ``log/`` (each
server's stderr). The account, container and object servers run with
``workers = 0`` (one process, no fork) and ``mount_check = false``; the proxy's
pipeline carries ``s3api`` in front of ``tempauth`` (and ``slo`` below it,
which S3 multipart uploads are built on). ``versioned_writes`` is left out: it
needs the symlink middleware.

Ports are picked free once and kept, so ``kill()`` then ``start()`` brings the
same engine back on the same endpoint with the same data (an engine outage).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"

_SERVERS = ("account", "container", "object")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name) or name


class SwiftEngine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.devices = root / "srv"
        self.logs = root / "log"
        self.ports = {name: _free_port() for name in (*_SERVERS, "proxy")}
        self.procs: dict[str, subprocess.Popen] = {}
        self._configured = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    # -- setup -----------------------------------------------------------------

    def _configure(self) -> None:
        for d in (self.etc, self.devices / "d1", self.logs):
            d.mkdir(parents=True, exist_ok=True)
        user = _user()
        (self.etc / "swift.conf").write_text(
            "[swift-hash]\nswift_hash_path_suffix = storaged-tests\nswift_hash_path_prefix = storaged\n\n"
            "[storage-policy:0]\nname = gold\ndefault = yes\n"
        )
        common = (
            f"[DEFAULT]\nbind_ip = 127.0.0.1\nswift_dir = {self.etc}\ndevices = {self.devices}\n"
            f"mount_check = false\nworkers = 0\nuser = {user}\nlog_level = WARNING\n"
            "log_udp_host = 127.0.0.1\nlog_udp_port = 9\n"
        )
        for name in _SERVERS:
            (self.etc / f"{name}-server.conf").write_text(
                common + f"bind_port = {self.ports[name]}\n\n"
                f"[pipeline:main]\npipeline = {name}-server\n\n"
                f"[app:{name}-server]\nuse = egg:swift#{name}\n\n"
                # The replicators, updaters and auditors are not started; their sections keep
                # the servers' config loader quiet.
                f"[{name}-replicator]\n\n[{name}-auditor]\n"
            )
        (self.etc / "proxy-server.conf").write_text(
            common + f"bind_port = {self.ports['proxy']}\n\n"
            "[pipeline:main]\n"
            "pipeline = catch_errors gatekeeper proxy-logging cache listing_formats s3api tempauth"
            " copy slo dlo proxy-logging proxy-server\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
            "[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n"
            "[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n"
            "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n"
            # No memcached: the proxy then looks account/container info up on every request,
            # which a one-node test engine can afford.
            "[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:9\n\n"
            "[filter:listing_formats]\nuse = egg:swift#listing_formats\n\n"
            f"[filter:s3api]\nuse = egg:swift#s3api\nlocation = {REGION}\n"
            "dns_compliant_bucket_names = false\n\n"
            f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {SECRET_KEY} .admin\n\n"
            "[filter:copy]\nuse = egg:swift#copy\n\n"
            "[filter:slo]\nuse = egg:swift#slo\n\n"
            "[filter:dlo]\nuse = egg:swift#dlo\n"
        )
        # The swift-ring-builder commands, run in one Python process: nine separate
        # start-ups cost seconds on a loaded machine.
        steps = []
        for ring in _SERVERS:
            builder = str(self.etc / f"{ring}.builder")
            steps += [
                [builder, "create", "10", "1", "1"],
                [builder, "add", f"r1z1-127.0.0.1:{self.ports[ring]}/d1", "1"],
                [builder, "rebalance"],
            ]
        build = subprocess.run(
            [sys.executable, "-c", _RING_BUILDER, json.dumps(steps)], capture_output=True, text=True, timeout=120
        )
        if build.returncode != 0:
            raise RuntimeError(f"building the rings failed: {build.stdout}{build.stderr}")
        self._configured = True

    # -- processes -------------------------------------------------------------

    def start(self, timeout: float = 60, nice: int = 0) -> SwiftEngine:
        """Start (or restart) the servers; ``nice`` lowers their CPU priority (a bench's stand-in for
        an engine on another machine)."""
        if not self._configured:
            self._configure()
        for name in (*_SERVERS, "proxy"):
            if name in self.procs and self.procs[name].poll() is None:
                continue
            log = open(self.logs / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                [_bin(f"swift-{name}-server"), str(self.etc / f"{name}-server.conf"), "-v"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
            log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll until every server accepts connections and the proxy answers an S3 request."""
        deadline = time.monotonic() + timeout
        for name in (*_SERVERS, "proxy"):
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"swift {name} server exited ({proc.returncode}):\n{self.log_tail(name)}")
                try:
                    socket.create_connection(("127.0.0.1", self.ports[name]), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"swift {name} server not listening:\n{self.log_tail(name)}")
                    time.sleep(0.05)
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL every server (an engine that dies mid-request)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- clients ---------------------------------------------------------------

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=30,
                # Swift's s3api answers the newer default checksum headers, but only when asked.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


# Runs each step as `swift-ring-builder <args>` would; exit code 1 is "done, with warnings".
_RING_BUILDER = """
import json, sys
from swift.cli.ringbuilder import main
for args in json.loads(sys.argv[1]):
    try:
        main(["swift-ring-builder", *args])
    except SystemExit as done:
        if done.code not in (None, 0, 1):
            sys.exit(f"swift-ring-builder {' '.join(args)}: exit {done.code}")
"""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
