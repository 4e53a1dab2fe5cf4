"""``storaged gc [--dry-run]`` and ``storaged fsck [--repair]``: safe off-line and against a live daemon.

Both take the same per-thing locks the daemon takes (objects, jobs,
records) and never the daemon's owner lock (``locks/daemon.lock``), so
they run beside a live ``storaged serve``.  The families' providers they
ask are handed in by the command line (storaged.families).
"""

from __future__ import annotations

import argparse
import sys

from typing import Callable, Iterable, TextIO

from storaged.config import Config, ConfigError, add_bool_flag
from storaged.ops.fsck import Fsck
from storaged.ops.janitor import Janitor, format_report
from storaged.provider import Provider
from storaged.store.layout import Layout

ProvidersFor = Callable[[Layout, Config], Iterable[Provider]]
# The storage tier's check of its remote copies: (layout, config, out, sample) -> problems found.
RemoteCheck = Callable[[Layout, Config, TextIO, int], int]


def _gc_args(parser: argparse.ArgumentParser) -> None:
    add_bool_flag(parser, "--dry-run", "dry_run", "print what would be deleted; delete nothing", default=False)


def _gc(config: Config, args: argparse.Namespace, providers: ProvidersFor) -> int:
    layout = Layout(config.data_dir)
    if not layout.root.is_dir():
        print(f"storaged gc: {layout.root} is not a directory")
        return 2
    try:
        janitor = Janitor(layout, config, providers(layout, config))
    except ConfigError as exc:
        print(f"storaged gc: {exc}")
        return 2
    report = janitor.run_blocking(dry_run=args.dry_run, trigger="gc")
    for line in format_report(report):
        print(line, flush=True)
    return 0


def _fsck_args(parser: argparse.ArgumentParser) -> None:
    add_bool_flag(parser, "--repair", "repair",
                  "move damaged items to <data>/lost+found, clear stale state, remove stray temps", default=False)
    add_bool_flag(parser, "--deep", "deep", "also read every recorded segment with ffprobe (slow)", default=False)
    add_bool_flag(parser, "--remote", "remote",
                  "also check the storage tier's copies: size, sha256 and ETag of every object recorded remote",
                  default=False)
    parser.add_argument("--remote-sample", type=int, default=0, metavar="N",
                        help="with --remote: also download N random remote copies and hash their bytes")


def _fsck(config: Config, args: argparse.Namespace, providers: ProvidersFor, check_remote: RemoteCheck) -> int:
    layout = Layout(config.data_dir)
    status = Fsck(layout, config, providers(layout, config), repair=args.repair, deep=args.deep).run()
    if args.remote or args.remote_sample:
        try:
            remote_problems = check_remote(layout, config, sys.stdout, args.remote_sample)
        except ConfigError as exc:
            print(f"storaged fsck --remote: {exc}", file=sys.stderr)
            return 2
        if remote_problems:
            status = max(status, 1)
    return status


def commands(providers: ProvidersFor, check_remote: RemoteCheck) -> dict:
    """name -> (help, add_arguments(parser), run(config, args) -> exit code).

    ``providers``: every family's provider (storaged.families.providers); ``check_remote``: the storage
    tier's check of its copies (storaged.families.check_remote), for ``fsck --remote``."""
    return {
        "gc": ("one janitor pass: delete expired data and free space (--dry-run: only print); "
               "safe beside a live daemon", _gc_args, lambda config, args: _gc(config, args, providers)),
        "fsck": ("verify every object, JSON file, job, queue entry and reference (--repair: set damage aside); "
                 "safe beside a live daemon", _fsck_args, lambda config, args: _fsck(config, args, providers, check_remote)),
    }
