"""What a family tells the rest of the daemon about the data it owns.

Each family (files, analyses, sessions, recording, videostreams, camera) is
the only code that knows its paths and file names.  It hands the rest of the
daemon a :class:`Provider`; the janitor, ``storaged gc``, ``storaged fsck``,
``/metrics`` and a storage tier only ever ask providers, so a new family is
handled everywhere by writing its provider and nothing in ``ops/``.

A provider answers, all blocking (call from a thread or the command line):

``kinds``
    The kinds of data it owns that retention may expire.  A :class:`Kind`
    lists its items (each with its age, size and tier) and deletes one
    safely, with the locks the family itself takes.  ``space`` says whether
    free-space pressure may delete the kind by default (ring-buffer data:
    recordings, motion images) or only when the ``space_kinds`` setting names
    it (everything a user asked for); a SPARE kind (local copies of bytes the
    storage tier holds verified) may always go.
``references(scan)``
    The stored objects its records and jobs point to, with who points
    (``"sessions/3"``).  Retention never deletes a referenced object.
``job_roots()``
    Directories whose subdirectories are job directories (``config.json``,
    ``inrun.pid``, ``results.json``): metrics count them by state, fsck
    checks them.
``top_dirs``
    Names it owns directly under the data root; anything else there that is
    not an object fan-out or the store's own directory is a stray to fsck.
``fsck(check)``
    Its own consistency checks, reporting problems through ``check``
    (:class:`storaged.ops.fsck.Fsck`'s ``report``/``repair`` surface, see
    :class:`FsckContext`).
``ready()``
    Awaited by the daemon's janitor before its first pass: a provider
    that answers from a running service's memory (the videostreams
    catalogue) waits here for it to load instead of reading every file.
``live()`` and ``usage(scan)``
    Its own /metrics samples (:class:`Sample`): ``live`` is read from
    running services at scrape time; ``usage`` is computed in the cached
    background walk (it may read files).
``replicable(root)``
    What a storage tier may copy elsewhere: the relative paths (under the
    data root) of the family's complete files, each whole as it is (a
    segment once its run's list names it, a record, a finished job's
    results and outputs), in the form storaged.tier.sources.TreeFiles walks.
    Stored objects are the tier's own ObjectSource.  The default is
    nothing; a tier that asks its providers never walks a family's
    directories itself.

Items that are written right now are never listed for deletion: a kind
leaves out what is in use (a live segment, an image of an export being
made); the object store's lock and the job engine's declared inputs cover
the rest (see storaged.ops.janitor).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from storaged.config import Config
from storaged.jobs.state import RESULTS, finished
from storaged.store.atomic import trash
from storaged.store.layout import Layout
from storaged.store.tree import tree_size
from storaged.store import tree

RESTARTS_HELP = "Restarts of supervised ffmpeg processes."
RING = "ring"        # free-space pressure may delete it by default (oldest first)
KEPT = "kept"        # free-space pressure deletes it only when `space_kinds` names it
SPARE = "spare"      # a copy whose loss loses nothing (the storage tier's evictable local bytes): always first


@dataclass
class Item:
    """One deletable unit: a file, an object directory or a job directory."""

    kind: str
    path: Path
    rel: str
    mtime: float
    size: int
    files: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    object_id: str | None = None   # set when the item is a stored object (references protect it)


@dataclass
class References:
    """Stored objects something points to: object id -> who (``"sessions/3"``, ``"job analysis/…"``)."""

    objects: dict[str, list[str]] = field(default_factory=dict)
    inputs: set[str] = field(default_factory=set)   # the subset queued or running jobs read

    def add(self, object_id: str, who: str, *, job_input: bool = False) -> None:
        self.objects.setdefault(object_id, []).append(who)
        if job_input:
            self.inputs.add(object_id)

    def who(self, object_id: str) -> list[str]:
        return self.objects.get(object_id, [])


@dataclass
class Scan:
    """What one janitor pass (or usage walk) knows; handed to every provider call."""

    layout: Layout
    config: Config
    refs: References = field(default_factory=References)
    usage: bool = False  # enumerate everything (for counting), ignoring protection
    now: float = field(default_factory=time.time)
    cache: dict[str, Any] = field(default_factory=dict)  # per-pass memo for providers

    @property
    def root(self) -> Path:
        return self.layout.root

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.layout.root)


@dataclass(frozen=True)
class Sample:
    """One /metrics sample a family contributes; samples sharing a name form one metric family."""

    name: str                      # full Prometheus name, e.g. storaged_recordings_active
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    type: str = "gauge"            # gauge | counter


@dataclass(frozen=True)
class Kind:
    name: str
    retention: str          # the Config field with this kind's maximum age (0 = keep)
    tier: int               # under space pressure lower tiers go first (oldest first within a tier)
    items: Callable[[Scan], Iterator[Item]]
    delete: Callable[[Scan, Item], bool]   # True: deleted; False: busy or protected now (skipped)
    space: str = KEPT       # RING or KEPT, see the module doc
    help: str = ""


class FsckContext(Protocol):
    """What a provider's fsck hook may use (implemented by storaged.ops.fsck.Fsck)."""

    layout: Layout
    config: Config
    repair: bool
    deep: bool       # --deep: the slow checks too

    def count(self, label: str, n: int) -> None:
        """``n`` more things of this kind were checked (the summary line shows ``<n> <label>``)."""

    def problem(self, what: str, path: Path, detail: str, repair: Callable[[], str] | None = None) -> None:
        """Report a problem; with --repair, ``repair()`` runs and says what it did."""

    def to_lost_found(self, path: Path) -> str:
        """Move ``path`` into lost+found; answers what it did."""


class Provider:
    """A family's answers (see the module doc).  Subclasses override what applies to them."""

    name: str = ""
    kinds: tuple[Kind, ...] = ()
    top_dirs: tuple[str, ...] = ()

    def references(self, scan: Scan) -> Iterable[tuple[str, str]]:
        return ()

    async def ready(self) -> None:
        """Wait (on the event loop) until what a running service holds can answer the calls above; the
        janitor's first pass waits for every provider's.  Most answer from the tree at once."""
        return None

    def job_roots(self) -> Iterable[Path]:
        return ()

    def fsck(self, check: FsckContext) -> None:
        return None

    def live(self) -> Iterable[Sample]:
        return ()

    def usage(self, scan: Scan) -> Iterable[Sample]:
        return ()

    def replicable(self, root: Path) -> Iterator[str]:
        return iter(())


def record_files(root: Path, kind: str) -> Iterator[str]:
    """``<kind>/<id>.json`` of every record file of a kind (for ``replicable``).  Blocking."""
    directory = root / kind
    for entry in sorted(tree.files(directory), key=lambda e: e.name):
        stem = entry.name[:-5]
        if entry.name.endswith(".json") and stem.isdigit():
            yield f"{kind}/{entry.name}"


def collect_references(providers: Iterable[Provider], scan: Scan) -> References:
    refs = References()
    for provider in providers:
        for object_id, who in provider.references(scan):
            refs.add(object_id, who)
    return refs


# -- helpers for kinds whose items are job directories ------------------------------------

def job_item(kind: str, scan: Scan, job_dir: Path, extra: dict[str, Any] | None = None) -> Item | None:
    """A finished job directory as an item, aged from its results; unfinished ones only when counting."""
    try:
        mtime = os.stat(job_dir / RESULTS).st_mtime
    except FileNotFoundError:
        if not scan.usage:
            return None
        try:
            mtime = os.stat(job_dir).st_mtime
        except FileNotFoundError:
            return None
    size, files = tree_size(job_dir)
    return Item(kind, job_dir, scan.rel(job_dir), mtime, size, files, dict(extra or {}))


def delete_finished_job(scan: Scan, item: Item) -> bool:
    """Trash a job directory whose worker is gone and whose results exist; False when it still runs."""
    if not finished(item.path):
        return False
    trash(item.path, scan.layout.tmp)
    return True
