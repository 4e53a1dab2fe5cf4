"""The camera family's answers: motion images (ring-buffer data), exports, camera restarts.

Layout (see storaged.camera.images and .convert)::

    <data>/camera/<n>/<YYYYMMDD>/<YYYYMMDD-HHMMSS-mmm>.jpg   motion images
    <data>/camera/processes/<id>/                            export jobs (createVideo/createZip)
    <data>/shared/captures/<fileName>                        their outputs

*Never listed for deletion.*  The images in the range of an export that is
queued or running (its own ``config.json`` says camera, start and end), and
that export's output name.

*Deleting.*  An image is unlinked and its day folder removed once empty (the
camera recreates it).  An export whose job has finished goes together with
its job directory, under the process's lock
(``locks/camera-process/<id>.lock``, the one the camera routes take).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from storaged.camera import images
from storaged.camera.convert import PROCESS_ID_RE
from storaged.config import Config
from storaged.jobs.queue import active_jobs
from storaged.jobs.state import CONFIG, finished
from storaged.provider import RESTARTS_HELP, KEPT, RING, Item, Kind, Provider, Sample, Scan
from storaged.store.atomic import read_json_or, sync_lock, trash, unlink_quiet
from storaged.store.layout import Layout
from storaged.store.tree import files, rmdir_quiet, subdirs


class CameraProvider(Provider):
    name = "camera"
    top_dirs = ("camera", "shared")

    def replicable(self, root: Path) -> Iterator[str]:
        """Motion images and the exports in ``shared/captures``."""
        for cam in subdirs(self.camera_root):
            if not cam.name.isdigit():
                continue
            for day in subdirs(cam):
                for entry in sorted(files(day), key=lambda e: e.name):
                    if images.time_of_name(entry.name) is not None:
                        yield f"camera/{cam.name}/{day.name}/{entry.name}"
        for entry in sorted(files(self.captures), key=lambda e: e.name):
            if not entry.name.startswith("."):
                yield f"shared/captures/{entry.name}"

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.camera_root = layout.root / "camera"
        self.processes = self.camera_root / "processes"
        self.captures = layout.root / "shared" / "captures"
        self.motion: Any = None  # the MotionService, when the daemon runs (for live figures)
        self.kinds = (
            Kind("motion_images", "retention_motion_images", 0, self.image_items, self.delete_image, RING,
                 "camera motion images"),
            Kind("exports", "retention_exports", 1, self.export_items, self.delete_export, KEPT,
                 "camera mp4/zip exports in shared/captures"),
        )

    def job_roots(self) -> Iterable[Path]:
        return (self.processes,)

    def _busy(self, scan: Scan) -> tuple[dict[int, list[tuple[str, str]]], set[str]]:
        """(camera -> key ranges, output names) of exports queued or running; memoised per pass."""
        if "camera.busy" not in scan.cache:
            ranges: dict[int, list[tuple[str, str]]] = {}
            outputs: set[str] = set()
            for job_dir, config in active_jobs(self.layout):
                if job_dir.parent != self.processes.resolve():
                    continue
                cam, start, end = config.get("camera"), config.get("start"), config.get("end")
                if isinstance(cam, int):
                    whole = not (isinstance(start, str) and isinstance(end, str)
                                 and images.KEY_RE.match(start) and images.KEY_RE.match(end))
                    ranges.setdefault(cam, []).append(("", "~") if whole else (start, end))
                if isinstance(config.get("fileName"), str):
                    outputs.add(config["fileName"])
            scan.cache["camera.busy"] = (ranges, outputs)
        return scan.cache["camera.busy"]

    # -- motion images -------------------------------------------------------------
    def image_items(self, scan: Scan) -> Iterator[Item]:
        ranges = {} if scan.usage else self._busy(scan)[0]
        for cd in subdirs(self.camera_root):
            if not cd.name.isdigit():
                continue
            cam = int(cd.name)
            for day in subdirs(cd):
                for e in files(day):
                    m = images.IMAGE_RE.match(e.name)
                    if m is None:
                        if not scan.usage or e.name.startswith("."):
                            continue
                    elif any(lo <= f"{m.group(1)}-{m.group(2)}" <= hi for lo, hi in ranges.get(cam, ())):
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield Item("motion_images", Path(e.path), scan.rel(Path(e.path)), st.st_mtime, st.st_size,
                               extra={"camera": cam})

    def delete_image(self, scan: Scan, item: Item) -> bool:
        unlink_quiet(item.path)
        rmdir_quiet(item.path.parent)
        return True

    # -- exports -------------------------------------------------------------------
    def export_items(self, scan: Scan) -> Iterator[Item]:
        outputs = set() if scan.usage else self._busy(scan)[1]
        for e in files(self.captures):
            if e.name.startswith(".") or e.name in outputs:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield Item("exports", Path(e.path), scan.rel(Path(e.path)), st.st_mtime, st.st_size)

    def _export_jobs(self, scan: Scan) -> dict[str, Path]:
        if "camera.exports" not in scan.cache:
            jobs: dict[str, Path] = {}
            for jd in subdirs(self.processes):
                try:
                    config = read_json_or(jd / CONFIG, None) if PROCESS_ID_RE.match(jd.name) else None
                except ValueError:
                    continue  # damaged: fsck reports it
                name = config.get("fileName") if isinstance(config, dict) else None
                if isinstance(name, str):
                    jobs[name] = jd
            scan.cache["camera.exports"] = jobs
        return scan.cache["camera.exports"]

    def delete_export(self, scan: Scan, item: Item) -> bool:
        job_dir = self._export_jobs(scan).get(item.path.name)
        if job_dir is None:
            unlink_quiet(item.path)
            return True
        with sync_lock(self.layout.lock_for("camera-process", job_dir.name), timeout=0):
            if job_dir.exists() and not finished(job_dir):
                return False
            unlink_quiet(item.path)
            if job_dir.exists():
                trash(job_dir, self.layout.tmp)
        return True

    # -- metrics -------------------------------------------------------------------
    def live(self) -> Iterable[Sample]:
        motion = self.motion
        yield Sample("storaged_motion_cameras_active", "Cameras whose motion ffmpeg is running.",
                     motion.active_cameras() if motion is not None else 0)
        yield Sample("storaged_ffmpeg_restarts", RESTARTS_HELP, motion.restarts() if motion is not None else 0,
                     (("family", "camera"),), "counter")
