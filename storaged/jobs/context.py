"""What a job function gets inside the worker process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Sequence

from storaged.supervise import ffmpeg as ff
from storaged.store.atomic import write_json
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, download_link

PROGRESS_EVERY = 0.25  # seconds between progress.json writes


class JobContext:
    def __init__(self, job_dir: Path, data_dir: Path, config: dict[str, Any]) -> None:
        self.job_dir = Path(job_dir)
        self.data_dir = Path(data_dir)
        self.config = config
        self.args: dict[str, Any] = config.get("args", {})
        self._last_progress = 0.0

    def progress(self, fraction: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        # Progress is advisory: no fsync, a lost update after a crash costs nothing.
        write_json(self.job_dir / "progress.json", {"progress": round(max(0.0, min(1.0, fraction)), 4)},
                   durable=False)

    def ffmpeg(self, args: Sequence[str], *, duration: float | None = None,
               progress_span: tuple[float, float] = (0.0, 1.0), cwd: Path | None = None) -> ff.Result:
        """Run ffmpeg with ``args`` (after the binary); progress maps into ``progress_span``."""
        lo, hi = progress_span
        on_progress = (lambda f: self.progress(lo + (hi - lo) * f)) if duration else None
        return asyncio.run(ff.run([*ff.base_args(), *args], duration=duration, on_progress=on_progress,
                                  cwd=cwd))

    def probe(self, target: str | Path) -> dict:
        return ff.probe_sync(target)

    def store_file(self, path: Path, name: str, content_type: str | None = None) -> dict[str, Any]:
        """Move a produced file into the content-addressed store; answer its id and link."""
        return self.store_files([(path, name, content_type)])[0]

    def store_files(self, files: list[tuple[Path, str, str | None]]) -> list[dict[str, Any]]:
        """Move produced files into the store as one group commit (hashes and fsyncs overlap);
        answer each one's id and link, in order, once all of them are durable."""
        store = ObjectStore(Layout(self.data_dir), max_size=1 << 62)
        metas = store.put_files_blocking([(Path(path), name, content_type) for path, name, content_type in files])
        return [{"file_id": meta["file_id"], "name": meta["name"], "size": meta["size"],
                 "download": download_link(meta)} for meta in metas]
