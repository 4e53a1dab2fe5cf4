"""The analyses family's answers: finished analysis jobs ``<object>/analysis/<analysis_id>/``.

A job on an object declares the object as its input (POST /analyse), so
retention keeps the object while the job is queued or running.  fsck checks
that the output links a finished analysis answers still name files that
exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

from storaged.config import Config
from storaged.jobs.state import PIDFILE, RESULTS
from storaged.provider import KEPT, FsckContext, Item, Kind, Provider, Scan, delete_finished_job, job_item
from storaged.store.atomic import read_json
from storaged.store.layout import Layout
from storaged.store.tree import files, subdirs

OUTPUT_LINK = re.compile(r"/download/([0-9a-f]{64})/analysis/([0-9a-f]{40})/([^/?#\s]+)")


class AnalysesProvider(Provider):
    name = "analyses"

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.kinds = (Kind("analyses", "retention_analyses", 1, self.items, delete_finished_job, KEPT,
                           "finished analysis jobs and their outputs"),)

    def replicable(self, root: Path) -> Iterator[str]:
        """Finished analysis jobs: results.json (written last) and their outputs."""
        for job_root in self.job_roots():
            for job in subdirs(job_root):
                if not (job / RESULTS).exists() or (job / PIDFILE).exists():
                    continue
                for entry in sorted(files(job), key=lambda e: e.name):
                    if not entry.name.startswith("."):
                        yield Path(entry.path).relative_to(root).as_posix()

    def job_roots(self) -> Iterable[Path]:
        for oid in self.layout.object_ids():
            yield self.layout.analyses_dir(oid)

    def items(self, scan: Scan) -> Iterator[Item]:
        for root in self.job_roots():
            for jd in subdirs(root):
                item = job_item("analyses", scan, jd, {"object": root.parent.name})
                if item is not None:
                    yield item

    def fsck(self, check: FsckContext) -> None:
        for root in self.job_roots():
            for jd in subdirs(root):
                self._check_outputs(check, jd)

    def _check_outputs(self, check: FsckContext, job_dir: Path) -> None:
        try:
            results = read_json(job_dir / RESULTS)
        except (FileNotFoundError, ValueError):
            return  # unfinished, or damaged JSON (the tree walk reports that)
        if not isinstance(results, dict) or results.get("status", "done") != "done":
            return
        missing = sorted({name for s in _strings(results) for fid, aid, name in OUTPUT_LINK.findall(s)
                          if not (self.layout.object_dir(fid) / "analysis" / aid / unquote(name)).exists()})
        if missing:
            check.problem("damaged job", job_dir,
                          f"results list outputs that are missing: {', '.join(missing[:5])}",
                          lambda: check.to_lost_found(job_dir) + " (ask again to redo it)")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
