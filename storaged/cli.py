"""Command line: ``storaged serve | version`` (more commands are added by their families)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import sys

from aiohttp import web

from storaged import __version__, config as config_mod, logs, sdnotify
from storaged.ops import commands as ops_commands

log = logging.getLogger("storaged")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


async def serve(config: config_mod.Config) -> None:
    from storaged.api.connections import GuardedSite
    from storaged.api.keys import CONNECTIONS, INFLIGHT, JOBS
    from storaged.app import create_app

    app = create_app(config)
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
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        guard = app[CONNECTIONS]
        site = GuardedSite(runner, guard, config.host, config.port)
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
        try:
            await asyncio.wait_for(inflight.idle.wait(), config.shutdown_timeout)
        except asyncio.TimeoutError:
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
COMMANDS.update(ops_commands.COMMANDS)  # gc, fsck


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
        try:
            asyncio.run(serve(config))
        except config_mod.ConfigError as exc:  # a setting only a service can judge (tier credentials...)
            print(f"storaged: {exc}", file=sys.stderr)
            return 2
        return 0
    _help, _add, run = COMMANDS[args.command]
    return run(config, args)
