"""``storaged gc [--dry-run]`` and ``storaged fsck [--repair]``: safe off-line and against a live daemon."""

from __future__ import annotations

import argparse
import sys

from storaged.config import Config, ConfigError, add_bool_flag
from storaged.ops.fsck import Fsck
from storaged.ops.janitor import Janitor, format_report
from storaged.store.layout import Layout


def _gc_args(parser: argparse.ArgumentParser) -> None:
    add_bool_flag(parser, "--dry-run", "dry_run", "print what would be deleted; delete nothing", default=False)


def _gc(config: Config, args: argparse.Namespace) -> int:
    layout = Layout(config.data_dir)
    if not layout.root.is_dir():
        print(f"storaged gc: {layout.root} is not a directory")
        return 2
    try:
        janitor = Janitor(layout, config)
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


def _fsck(config: Config, args: argparse.Namespace) -> int:
    status = Fsck(Layout(config.data_dir), config, repair=args.repair, deep=args.deep).run()
    if args.remote or args.remote_sample:
        from storaged.tier.check import check_remote

        try:
            remote_problems = check_remote(Layout(config.data_dir), config, sys.stdout, args.remote_sample)
        except ConfigError as exc:
            print(f"storaged fsck --remote: {exc}", file=sys.stderr)
            return 2
        if remote_problems:
            status = max(status, 1)
    return status


COMMANDS = {
    "gc": ("one janitor pass: delete expired data and free space (--dry-run: only print)", _gc_args, _gc),
    "fsck": ("verify every object, JSON file, job and queue entry (--repair: set damage aside)",
             _fsck_args, _fsck),
}
