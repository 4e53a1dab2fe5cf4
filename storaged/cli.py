"""Command line: ``storaged serve | version`` (more commands are added by their families)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import errno
import logging
import os
import secrets
import signal
import socket
import sys

from aiohttp import web

from storaged import __version__, config as config_mod, logs, sdnotify
from storaged import families
from storaged.api.connections import GuardedSite
from storaged.api.keys import CONNECTIONS, INFLIGHT, JOBS
from storaged.app import create_app
from storaged.ops import commands as ops_commands
from storaged.tier import restore as tier_restore
from storaged.store import owner as store_owner
from storaged.supervise import ffmpeg
from storaged.supervise.backoff import woken

log = logging.getLogger("storaged")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


class StartupError(Exception):
    """The daemon cannot start; the message is the one line printed before exiting 1."""


def _cause(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{os.strerror(exc.errno)} ({name})" if name else str(exc)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (so a taken port is a clean failure)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {_cause(exc)}") from None


def preflight(config: config_mod.Config) -> tuple[socket.socket, int]:
    """What ``serve`` needs before it starts anything: a writable data root, a usable ffmpeg, the port,
    and the data root's owner lock (storaged.store.owner; its descriptor is answered: keep it open)."""
    root = config.data_dir.absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".storaged-start-{secrets.token_hex(4)}.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"the data root {root} is not writable: {_cause(exc)}") from None
    try:
        ffmpeg.check_tools()
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    sock = listen(config.host, config.port)
    # Last, so that a daemon that cannot start otherwise leaves the data root as it found it.
    try:
        return sock, store_owner.acquire(root)
    except store_owner.DataRootBusy as exc:
        sock.close()
        raise StartupError(str(exc)) from None
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot take {root / 'locks' / store_owner.LOCK_NAME}: {_cause(exc)}") from None


async def serve(config: config_mod.Config, sock: socket.socket) -> None:
    app = create_app(config)  # a bad setting raises ConfigError here
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="storaged-io"))
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("storaged.access") if config.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=config.shutdown_timeout,
        handle_signals=False,
        keepalive_timeout=config.keepalive_timeout,
    )
    try:
        await runner.setup()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot set up the data root {config.data_dir.absolute()}: {_cause(exc)}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        guard = app[CONNECTIONS]
        site = GuardedSite(runner, guard, config.host, config.port, sock=sock)
        await site.start()
        guard.start()
        log.info("storaged %s serving %s on http://%s:%d", __version__, config.data_dir.absolute(),
                 config.host, config.port)
        sdnotify.notify("READY=1\nSTATUS=serving")
        warm_up = asyncio.create_task(app[JOBS].warm_up(), name="jobs-warm-up")
        await stop.wait()
        await warm_up
        sdnotify.notify("STOPPING=1")
        inflight = app[INFLIGHT]
        log.info("shutting down: %d request(s) in flight get %.0fs", inflight.count, config.shutdown_timeout)
        await site.stop()  # no new connections; requests in flight go on
        await woken(inflight.idle, config.shutdown_timeout)
        if not inflight.idle.is_set():
            log.warning("%d request(s) still in flight after %.0fs; closing them", inflight.count,
                        config.shutdown_timeout)
    finally:
        await app[CONNECTIONS].stop()
        await runner.cleanup()
    log.info("stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storaged", description="storage daemon of a video capture box")
    parser.add_argument("--version", action="version", version=f"storaged {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP daemon")
    config_mod.add_arguments(p_serve)
    for name, (help_text, add_args, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        config_mod.add_arguments(p)
        add_args(p)
    return parser


# Other commands register here: name -> (help, add_arguments(parser), run(config, args) -> exit code).
COMMANDS: dict = {}
COMMANDS.update(ops_commands.commands(families.providers, families.check_remote))  # gc, fsck
COMMANDS.update(tier_restore.COMMANDS)  # restore --from-remote


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_mod.load(args)
    except (config_mod.ConfigError, OSError) as exc:
        print(f"storaged: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    if args.command == "serve":
        # Start-up failures are one line and a non-zero exit, not a traceback: 2 for a bad
        # setting (like the ones load() finds), 1 for anything else in the way (another daemon
        # owning the data root included).
        try:
            sock, owner = preflight(config)
            try:
                with sock:
                    asyncio.run(serve(config, sock))
            finally:
                store_owner.release(owner)
        except config_mod.ConfigError as exc:
            print(f"storaged: bad setting: {exc}", file=sys.stderr)
            return 2
        except StartupError as exc:
            print(f"storaged: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0
    _help, _add, run = COMMANDS[args.command]
    return run(config, args)
