"""The janitor: retention by age, free space and quota.  It knows no family's files: it asks providers.

Protocol
--------
One pass (blocking, in a thread or from ``storaged gc``):

1. *References.*  Every provider names the stored objects its records point
   to (a session's video, a videostream's recording, a stream clip's mp4)
   and the job queue names the inputs queued and running jobs declared
   (storaged.jobs.queue).  A referenced object is never deleted, by age or
   for space, while the reference exists; pinned objects neither.  Each
   kind leaves out what is being written or read right now (the live
   segment, the images of an export being made).
2. *Age.*  Every kind with a maximum age (``retention_<kind>``, 0 = keep
   forever) loses its items older than that, oldest first.
3. *Space.*  While the data filesystem has less free space than
   ``min_free`` (bytes or a percent of its size), or the data root holds more
   than ``quota``, items go oldest first, tier by tier, but only of the kinds
   ``space_kinds`` names (by default the ring-buffer data: recordings and
   motion images) and never one younger than ``live_window``.  With a
   storage tier that evicts, its local copies of bytes verified in the
   bucket (kind ``remote_copies``, a SPARE kind) go first, whatever their
   age: nothing is lost.  Uploads,
   exports, clips, splits and analyses a user asked for go for space only
   when ``space_kinds`` names them.  When nothing deletable is left the pass
   says so at WARNING; writes that then meet a full disk answer 507 and
   nothing acknowledged is touched.
4. At most ``janitor_max_files`` items go per pass.  Every deletion is
   logged: for age at INFO, for space at WARNING with what was freed and
   why; both are counted in /metrics (``storaged_janitor_deleted_*`` and
   ``storaged_janitor_space_deleted_*``) and ``storaged gc --dry-run`` lists
   what a pass would delete and why.

Each kind deletes its items with the locks its owners use (see the
family's provider); an item whose lock is busy is skipped this pass.  A dry
run walks the same way and deletes nothing.

The daemon runs a pass at start, every ``janitor_interval``, and at once when
poked (a write met a full disk: a 507 answer pokes it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from filelock import Timeout

from storaged.config import Config, ConfigError, human_age, parse_size
from storaged.config import human_size as human
from storaged.jobs.queue import active_inputs
from storaged.provider import RING, SPARE, Item, Kind, Provider, References, Scan, collect_references
from storaged.store.layout import Layout
from storaged.store.tree import tree_size
from storaged.supervise.backoff import woken

log = logging.getLogger("storaged.janitor")


def parse_min_free(raw: str, total: int) -> int:
    """``5%`` of ``total``, or a size (``2G``, ``1048576``)."""
    text = str(raw).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ConfigError(f"min_free: not a percent: {raw!r}") from None
        if not 0 <= pct < 100:
            raise ConfigError(f"min_free: percent must be in [0, 100): {raw!r}")
        return int(total * pct / 100)
    return parse_size(text)


def disk(root) -> tuple[int, int]:
    """(free bytes for us, total bytes) of the filesystem holding ``root``."""
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


@dataclass
class Deletion:
    kind: str
    rel: str
    size: int
    age: float
    reason: str
    deleted: bool

    def line(self, dry_run: bool) -> str:
        verb = "would delete" if dry_run else "deleted"
        return f"{verb} {self.kind} {self.rel} ({human(self.size)}, {human_age(self.age)} old): {self.reason}"


@dataclass
class PassReport:
    dry_run: bool
    trigger: str
    deletions: list[Deletion] = field(default_factory=list)
    skipped: int = 0
    needed: int = 0          # bytes space/quota asked for at the start
    free_before: int = 0
    free_after: int = 0
    short: int = 0           # bytes still missing after the pass (nothing left to delete, or the cap)

    @property
    def freed(self) -> int:
        return sum(d.size for d in self.deletions if d.deleted)


def space_kinds(config: Config, kinds: Iterable[Kind]) -> set[str]:
    """The kinds free-space pressure may delete: those ``space_kinds`` names (``ring``: every ring-buffer kind)."""
    known = {k.name: k for k in kinds}
    raw = [n.strip() for n in str(config.space_kinds).split(",") if n.strip()]
    unknown = [n for n in raw if n != RING and n not in known]
    if unknown:
        raise ConfigError(f"space_kinds: unknown kind(s) {', '.join(unknown)} "
                          f"(known: {RING}, {', '.join(sorted(known))})")
    out = {n for n in raw if n != RING} | {k.name for k in known.values() if k.space == SPARE}
    if RING in raw:
        out |= {k.name for k in known.values() if k.space == RING}
    return out


class Janitor:
    def __init__(self, layout: Layout, config: Config, providers: Iterable[Provider]) -> None:
        self.layout = layout
        self.config = config
        self.providers = list(providers)
        self.kinds = [k for p in self.providers for k in p.kinds]
        parse_min_free(config.min_free, 100)  # a bad setting fails at start, not in a pass
        self.space_kinds = space_kinds(config, self.kinds)
        self.passes = 0
        self.deleted_files: Counter[str] = Counter()
        self.deleted_bytes: Counter[str] = Counter()
        self.space_deleted_files: Counter[str] = Counter()
        self.space_deleted_bytes: Counter[str] = Counter()
        self.last_pass: float | None = None
        self.last_report: PassReport | None = None
        self.recent: deque[Deletion] = deque(maxlen=1000)  # the latest deletions, oldest first

    def references(self, scan: Scan) -> References:
        refs = collect_references(self.providers, scan)
        for oid, who in active_inputs(self.layout):
            refs.add(oid, who, job_input=True)
        return refs

    # -- the pass ----------------------------------------------------------------
    def run_blocking(self, *, dry_run: bool = False, trigger: str = "manual") -> PassReport:
        cfg = self.config
        env = Scan(self.layout, cfg)
        env.refs = self.references(env)
        report = PassReport(dry_run=dry_run, trigger=trigger)
        budget = max(0, cfg.janitor_max_files)
        done: set[str] = set()

        def take(items: Iterable[Item], reason: str, need: list[int] | None = None) -> None:
            nonlocal budget
            for item in items:
                if budget <= 0 or (need is not None and need[0] <= 0):
                    return
                if item.rel in done:
                    continue
                if item.object_id is not None and env.refs.who(item.object_id):
                    continue  # a provider listed a referenced object: references win
                ok = dry_run or self._delete(env, item)
                done.add(item.rel)
                if ok is None:
                    report.skipped += 1
                    continue
                budget -= 1
                d = Deletion(item.kind, item.rel, item.size, env.now - item.mtime, reason, bool(ok) and not dry_run)
                report.deletions.append(d)
                if need is not None and ok:
                    need[0] -= item.size
                if d.deleted:
                    self.recent.append(d)
                    self.deleted_files[item.kind] += 1
                    self.deleted_bytes[item.kind] += item.size
                    if need is None:
                        log.info("janitor: %s", d.line(False))
                    else:
                        self.space_deleted_files[item.kind] += 1
                        self.space_deleted_bytes[item.kind] += item.size
                        log.warning("janitor: %s; still %s to free", d.line(False), human(max(0, need[0])))

        # 1. age
        expired: list[Iterator[Item]] = []
        for kind in self.kinds:
            max_age = getattr(cfg, kind.retention, 0) or 0
            if max_age > 0:
                cutoff = env.now - max_age
                expired.append(_oldest((i for i in kind.items(env) if i.mtime < cutoff), budget))
        if expired:
            take(heapq.merge(*expired, key=lambda i: i.mtime), "older than its retention")

        # 2. space and quota
        free, total = disk(self.layout.root)
        report.free_before = free
        need_free = max(0, parse_min_free(cfg.min_free, total) - free)
        need_quota = 0
        if cfg.quota > 0:
            used, _ = tree_size(self.layout.root)
            need_quota = max(0, used - cfg.quota)
        if dry_run:
            # The age step deleted nothing: count what it would have freed.
            would = sum(d.size for d in report.deletions)
            need_free, need_quota = max(0, need_free - would), max(0, need_quota - would)
        need = [max(need_free, need_quota)]
        report.needed = need[0]
        reason = (f"free space {human(free)} below min_free {cfg.min_free}" if need_free >= need_quota
                  else f"data root above quota {human(cfg.quota)}")
        floor = env.now - max(0.0, cfg.live_window)
        for tier in sorted({k.tier for k in self.kinds}):
            if need[0] <= 0 or budget <= 0:
                break
            kinds = [k for k in self.kinds if k.tier == tier and (k.name in self.space_kinds)]
            if not kinds:
                continue
            # A spare copy loses nothing, so the live window does not hold it back.
            candidates = heapq.merge(*(_oldest((i for i in k.items(env) if k.space == SPARE or i.mtime < floor),
                                               budget + len(done))
                                       for k in kinds), key=lambda i: i.mtime)
            take(candidates, reason, need)
        report.short = max(0, need[0])
        report.free_after = disk(self.layout.root)[0]
        if report.short and not dry_run:
            log.warning("janitor: still %s short of min_free/quota after deleting %d item(s)%s",
                        human(report.short), len(report.deletions),
                        " (max files per pass reached)" if budget <= 0 else
                        f": nothing else may be deleted (space_kinds: {', '.join(sorted(self.space_kinds))}; "
                        f"nothing younger than live_window {human_age(cfg.live_window)}); "
                        "writes that meet a full disk answer 507")
        self.passes += 1
        self.last_pass = time.time()
        self.last_report = report
        return report

    def _delete(self, env: Scan, item: Item) -> bool | None:
        """True when deleted; None when skipped (busy, pinned meanwhile, gone)."""
        kind = next(k for k in self.kinds if k.name == item.kind)
        try:
            return True if kind.delete(env, item) else None
        except Timeout:
            return None
        except FileNotFoundError:
            return None
        except OSError:
            log.exception("janitor: could not delete %s", item.rel)
            return None


def _oldest(items: Iterator[Item], n: int) -> Iterator[Item]:
    """The ``n`` oldest of ``items``, oldest first; memory stays O(n) however many there are."""
    return iter(heapq.nsmallest(n, items, key=lambda i: (i.mtime, i.rel)))


class JanitorTask:
    """Runs passes in a thread: at start, every ``interval`` and when poked.  Not thread safe: the loop's."""

    MIN_GAP = 1.0  # a disk that stays full must not turn pokes into a walk loop

    def __init__(self, janitor: Janitor, interval: float) -> None:
        self.janitor = janitor
        self.interval = interval
        self.pokes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.running = False

    def poke(self) -> None:
        self.pokes += 1
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="janitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self, trigger: str) -> PassReport | None:
        self.running = True
        try:
            return await asyncio.to_thread(self.janitor.run_blocking, trigger=trigger)
        except Exception:
            log.exception("janitor pass failed; the next one tries again")
            return None
        finally:
            self.running = False

    async def _loop(self) -> None:
        trigger = "start"
        # A provider answering from memory would otherwise read its whole tree on this pass (a million
        # record files at start-up, competing with the first requests); a failed load leaves it the tree.
        await asyncio.gather(*(p.ready() for p in self.janitor.providers), return_exceptions=True)
        while True:
            self._wake.clear()
            began = time.monotonic()
            await self.run_once(trigger)
            timeout = self.interval if self.interval > 0 else None
            await woken(self._wake, timeout)
            if self._wake.is_set():
                trigger = "poke"
                await asyncio.sleep(max(0.0, self.MIN_GAP - (time.monotonic() - began)))
            else:
                trigger = "periodic"


def format_report(report: PassReport) -> Iterator[str]:
    for d in report.deletions:
        yield d.line(report.dry_run)
    verb = "would free" if report.dry_run else "freed"
    yield (f"{len(report.deletions)} item(s), {verb} {human(sum(d.size for d in report.deletions))}; "
           f"free space {human(report.free_before)} before"
           + ("" if report.dry_run else f", {human(report.free_after)} after")
           + (f"; still {human(report.short)} short" if report.short else ""))

