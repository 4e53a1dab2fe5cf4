"""The long SIGKILL loop: tests/reliability/test_crash_loop.py with many kills, and its figures.

    .venv/bin/python bench/crash_loop.py [--kills 500] [--seed 20240607] [--until 18:00] [--write]

Runs the crash-loop test (a real daemon under mixed load — uploads, record
writes, analyses, clip requests on a stream recording a live UDP source —
SIGKILLed at a random instant and restarted, ``--kills`` times, with every
acknowledged write checked and ``storaged fsck`` run after every restart) as
a pytest subprocess, and reports what it proved: kills, acknowledged uploads
and record writes, how many checks they got, fsck runs and their result, and
the wall time.  ``--until HH:MM`` (UTC) starts no kill after that time and
reports the kills made (an honest smaller figure beats a run that never
ends).  Correctness, not speed: it has no yardstick; the figure to
read is "0 lost".  Not part of CI (500 kills take most of an hour on a shared
2-core machine).  ``--write`` puts the section into BENCHMARKS.md
(``## crash loop``); without it the section is only printed.

The run's directory (the daemon's log, its data root, report.json with the
figures so far, rewritten after every kill) is on disk under the temp dir
(``storaged-crash-loop-*``): removed when the run passes, kept and named on
stderr when it fails, so a finding can be diagnosed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, disk_tempdir, machine_note, publish  # noqa: E402

HEADING = "crash loop"
TEST = "tests/reliability/test_crash_loop.py"


class LoopFailed(Exception):
    pass


def deadline_of(hhmm: str) -> float:
    """The next instant (Unix time) at HH:MM UTC."""
    now = datetime.now(timezone.utc)
    hour, minute = (int(x) for x in hhmm.split(":"))
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= now:
        at += timedelta(days=1)
    return at.timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument("--until", help="UTC time HH:MM after which no further kill starts")
    parser.add_argument("--write", action="store_true", help="put the figures into BENCHMARKS.md")
    args = parser.parse_args()

    started = time.monotonic()
    try:
        figures, wall = run(args)
    except LoopFailed as exc:
        print(f"\nthe crash loop FAILED after {time.monotonic() - started:.0f} s ({exc}); see its output above",
              file=sys.stderr)
        return 1
    publish(HEADING, section(args, figures, wall), no_write=not args.write)
    return 0


def run(args: argparse.Namespace) -> tuple[dict, float]:
    """Run the test; its final figures and the wall time.  Raises LoopFailed (keeping the run's directory)."""
    with disk_tempdir("storaged-crash-loop-", keep_on_error=True) as tmp:
        report = tmp / "report.json"
        print(f"the run's directory: {tmp} (progress: {report})", file=sys.stderr)
        env = {**os.environ, "STORAGED_CRASH_LOOPS": str(args.kills), "STORAGED_CRASH_SEED": str(args.seed),
               "STORAGED_CRASH_REPORT": str(report)}
        # The test's own hang guard grows with the kills asked for (pytest-timeout's marker beats --timeout).
        argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                "--basetemp", str(tmp / "t"), TEST]
        if args.until:
            env["STORAGED_CRASH_DEADLINE"] = str(deadline_of(args.until))
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - started
        figures = json.loads(report.read_text()) if report.exists() else None
        if proc.returncode != 0 or not (figures and figures.get("final")):
            raise LoopFailed(f"pytest exit {proc.returncode}")
    return figures, wall


def section(args: argparse.Namespace, figures: dict, wall: float) -> str:
    command = f".venv/bin/python bench/crash_loop.py --kills {args.kills} --seed {args.seed}"
    cut_short = ""
    if figures["kills"] < args.kills:
        cut_short = f" (of {args.kills} asked: the run was bounded by `--until {args.until}`)"
    if args.until:
        command += f" --until {args.until}"
    return f"""```sh
{command}
```

{TEST} with {figures['kills']} SIGKILLs{cut_short} at random instants (seed {figures['seed']}) of a real daemon
under mixed load: uploads, session/race/event and videostream writes, dummy and clip analyses, clip
requests on a stream recording a live UDP source (2 s segments) the whole time.

| figure | value |
| --- | ---: |
| kills (SIGKILL + restart) | {figures['kills']} |
| acknowledged uploads (SHA-256 by the test once, by fsck after every later kill; meta, link, size by the test) | {figures['acknowledged_uploads']} |
| acknowledged records (sessions, races, events, videostreams) | {figures['acknowledged_records']} |
| acknowledged record updates and deletes | {figures['acknowledged_record_writes']} |
| acknowledged analyses (still present after every kill; all done or failed at the end) | {figures['acknowledged_analyses']} |
| object checks / record checks, summed over kills | {figures['object_checks']} / {figures['record_checks']} |
| `storaged fsck` runs (after every restart and at the end) / failures | {figures['fsck_runs']} / {figures['fsck_failures']} |
| acknowledged writes lost or torn | **0** |
| slowest restart (SIGKILL's successor answering `/healthz`) | {figures['slowest_start_s']:.1f} s |
| wall time | {wall / 60:.1f} min ({wall / figures['kills']:.1f} s a kill) |

Machine: {machine_note()}; run at niceness {os.nice(0)}."""


if __name__ == "__main__":
    sys.exit(main())
