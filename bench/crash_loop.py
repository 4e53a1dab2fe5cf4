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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_note, publish  # noqa: E402

HEADING = "crash loop"
TEST = "tests/reliability/test_crash_loop.py"


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

    with tempfile.TemporaryDirectory(prefix="storaged-crash-loop-") as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "STORAGED_CRASH_LOOPS": str(args.kills), "STORAGED_CRASH_SEED": str(args.seed),
               "STORAGED_CRASH_REPORT": str(report)}
        argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--timeout", "0",
                "--basetemp", str(Path(tmp) / "t"), TEST]
        if args.until:
            env["STORAGED_CRASH_DEADLINE"] = str(deadline_of(args.until))
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - started
        figures = json.loads(report.read_text()) if report.exists() else None

    command = f".venv/bin/python bench/crash_loop.py --kills {args.kills} --seed {args.seed}"
    if proc.returncode != 0 or figures is None:
        print(f"\nthe crash loop FAILED after {wall:.0f} s (pytest exit {proc.returncode}); see its output above",
              file=sys.stderr)
        return 1
    cut_short = ""
    if figures["kills"] < args.kills:
        cut_short = f" (of {args.kills} asked: the run was bounded by `--until {args.until}`)"
    if args.until:
        command += f" --until {args.until}"
    text = f"""```sh
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
| wall time | {wall / 60:.1f} min ({wall / figures['kills']:.1f} s a kill) |

Machine: {machine_note()}; run at niceness {os.nice(0)}."""
    publish(HEADING, text, no_write=not args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
