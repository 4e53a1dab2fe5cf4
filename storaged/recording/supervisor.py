"""Streams: records, start/stop, and the supervisor that keeps each started stream recording.

Protocol
--------
*Records.*  ``<data>/streams/<id>.json`` (RecordStore, sequential ids) holds
what the contract shows: url, description, create/start/stop dates.

*State.*  ``<data>/streams/<id>/state.json`` (written atomically) holds what
the supervisor knows: ``recording`` (the operator's wish: started and not
stopped), the session number (one per start), every run (one ffmpeg process:
its session, spawn/end times, why it ended, its live videostream id) and the
restart count.  ``inrun.pid`` names the live segmenter (storaged.recording.
segmenter); ``segments/`` holds what it wrote (storaged.recording.index).

*Who waits.*  start/stop of one stream are serialised by an in-process lock
per stream (one daemon owns a data root); state writes by another.  Readers
(status, clips) take no lock: they read whole files.

*Supervision.*  While a stream is started, one task watches its segmenter:
the process ending (source gone: ffmpeg's own read timeout) or its segment
list not growing for ``2 x segment_time + stall_timeout`` (the watchdog)
ends the run; the next run starts after a backoff (1 s doubling up to
``stream_restart_max_backoff``, back to 1 s after a run that recorded).  The
hole between runs is a gap in the index.

*Restart of the daemon.*  Segmenters run detached and outlive the daemon; a
daemon stopping leaves them recording.  At start-up every stream whose state
says ``recording`` is adopted (identity from ``inrun.pid`` still alive) or
restarted (the run is marked lost, a new run begins).

*Finishing segments.*  The watchdog gives each listed segment of the live run
its final name as soon as the list grows; a run that ends gets its remaining
ones finished and its unfinished temp file removed; start-up does both for
every run (storaged.recording.index has the rules).

*What a crash leaves.*  A state file that may lag by one run transition;
segments under temp names that the next start-up finishes or removes; final
names only for complete segments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from storaged.config import Config
from storaged.errors import NotFound, StoragedError
from storaged.recording import index as idx
from storaged.recording.segmenter import PIDFILE, Segmenter, check_url
from storaged.store.atomic import read_json_or, unlink_quiet, write_json
from storaged.store.layout import Layout
from storaged.store.records import RecordStore
from storaged.supervise.backoff import Backoff

log = logging.getLogger("storaged.streams")

KIND = "streams"
STATE = "state.json"
POLL = 0.5
STOP_STEP_TIMEOUT = 5.0


def stream_error(message: str, status: int = 500) -> StoragedError:
    return StoragedError(message, status=status)


class LiveCatalogue(Protocol):
    """Where a recording run appears as a live videostream (the videostreams catalogue)."""

    async def start_live(self, stream_url: str, capturesource: int | None = None,
                         start: datetime | None = None) -> dict[str, Any]: ...

    async def end_live(self, record_id: Any, end: datetime | None = None) -> dict[str, Any]: ...


class StreamService:
    def __init__(self, layout: Layout, config: Config, catalogue: LiveCatalogue | None = None) -> None:
        self.layout = layout
        self.config = config
        self.records = RecordStore(layout, KIND)
        self.root = layout.root / KIND
        self.catalogue = catalogue  # the videostreams catalogue, when the app has one
        self._recorders: dict[int, Recorder] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._state_locks: dict[int, asyncio.Lock] = {}
        self._indexes: dict[int, idx.StreamIndex] = {}

    # -- paths and small helpers -------------------------------------------------
    def active_recordings(self) -> int:
        """Streams whose segmenter process is running right now (for /metrics)."""
        return sum(1 for r in list(self._recorders.values()) if r.proc is not None and r.proc.alive())

    def stream_dir(self, stream_id: int) -> Path:
        return self.root / str(int(stream_id))

    def index(self, stream_id: int) -> idx.StreamIndex:
        if stream_id not in self._indexes:
            self._indexes[stream_id] = idx.StreamIndex(self.stream_dir(stream_id) / "segments")
        return self._indexes[stream_id]

    def parse_id(self, raw: Any) -> int:
        """Malformed ids answer the contract's 404 (no stream can have them)."""
        try:
            return self.records.parse_id(raw, "stream id")
        except StoragedError:
            raise NotFound("Stream not found") from None

    async def record(self, raw_id: Any) -> dict[str, Any]:
        stream_id = self.parse_id(raw_id)
        try:
            return await self.records.get(stream_id)
        except NotFound:
            raise NotFound("Stream not found") from None

    def _lock(self, stream_id: int) -> asyncio.Lock:
        return self._locks.setdefault(stream_id, asyncio.Lock())

    def read_state_blocking(self, stream_id: int) -> dict[str, Any]:
        state = read_json_or(self.stream_dir(stream_id) / STATE, None)
        if state is None:
            state = {"recording": False, "session": 0, "next_run": 1, "runs": [], "restarts": 0}
        return state

    async def read_state(self, stream_id: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.read_state_blocking, stream_id)

    async def update_state(self, stream_id: int, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        async with self._state_locks.setdefault(stream_id, asyncio.Lock()):
            state = await self.read_state(stream_id)
            result = change(state)
            d = self.stream_dir(stream_id)
            await asyncio.to_thread(lambda: (d.mkdir(parents=True, exist_ok=True), write_json(d / STATE, state)))
            return result if result is not None else state

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> None:
        """Finish what segmenters left while no daemon ran; adopt or restart every started stream."""
        for record in await self.records.all():
            stream_id = record["id"]
            state = await self.read_state(stream_id)
            proc, run = await asyncio.to_thread(Segmenter.adopt_blocking, self.stream_dir(stream_id))
            await self.finalize(stream_id, live_run=proc.run if proc is not None else None)
            if not state.get("recording"):
                continue
            if proc is not None:
                log.info("stream %d: adopted segmenter pid %d (run %d)", stream_id, proc.identity.pid, run)
            elif run is not None:
                log.warning("stream %d: segmenter of run %d died while the daemon was down; restarting",
                            stream_id, run)
                await self._end_run(stream_id, run, "lost while the daemon was down")
                await asyncio.to_thread(unlink_quiet, self.stream_dir(stream_id) / PIDFILE)
                await self.update_state(stream_id, _count_restart)
            recorder = Recorder(self, stream_id, record["url"], proc)
            self._recorders[stream_id] = recorder
            recorder.begin()

    async def close(self) -> None:
        """Stop supervising; the segmenters keep recording for the next daemon to adopt."""
        recorders = list(self._recorders.values())
        self._recorders.clear()
        for r in recorders:
            await r.detach()

    async def finalize(self, stream_id: int, live_run: int | None = None,
                       runs: list[int] | None = None) -> bool:
        """Give finished segments their final names (storaged.recording.index); True if one waits for a retry."""
        seg_dir = self.stream_dir(stream_id) / "segments"

        def work() -> bool:
            retry = False
            for run in runs if runs is not None else self.index(stream_id).runs():
                retry |= idx.finalize_run(seg_dir, run, live=run == live_run)[2]
            return retry

        return await asyncio.to_thread(work)

    # -- API operations ---------------------------------------------------------
    async def create(self, url: Any, description: Any = None) -> dict[str, Any]:
        if url is None or (isinstance(url, str) and not url.strip()):
            raise stream_error("URL cannot be empty")
        if not isinstance(url, str):
            raise stream_error("URL cannot be empty") if not url else \
                StoragedError("url must be a string", status=400)
        url = check_url(url)
        if description is not None and not isinstance(description, str):
            description = str(description)
        return await self.records.create({"url": url, "description": description or "",
                                          "create_date": int(time.time()),
                                          "start_date": None, "stop_date": None})

    async def list(self) -> list[dict[str, Any]]:
        out = []
        for record in await self.records.all():
            try:
                out.append(await self._status(record))
            except (OSError, ValueError):
                out.append(dict(record))
        return out

    async def recordings_by_day(self, stream_id: int, tz: Any = timezone.utc) -> list[dict[str, Any]]:
        """The stream's recorded segments grouped by day in ``tz``, newest day first:
        ``[{"day": "YYYY-MM-DD", "segments", "seconds", "bytes", "start", "end"}]`` (POSIX seconds)."""
        segments = await asyncio.to_thread(self.index(stream_id).segments)
        days: dict[str, dict[str, Any]] = {}
        for seg in segments:
            day = datetime.fromtimestamp(seg.start, tz).strftime("%Y-%m-%d")
            d = days.setdefault(day, {"day": day, "segments": 0, "seconds": 0.0, "bytes": 0,
                                      "start": seg.start, "end": seg.end})
            d["segments"] += 1
            d["seconds"] += seg.duration
            d["bytes"] += seg.size
            d["start"], d["end"] = min(d["start"], seg.start), max(d["end"], seg.end)
        return sorted(days.values(), key=lambda d: d["day"], reverse=True)

    async def start(self, raw_id: Any) -> None:
        record = await self.record(raw_id)
        stream_id = record["id"]
        async with self._lock(stream_id):
            state = await self.read_state(stream_id)
            if state.get("recording"):
                raise stream_error("Stream already started")
            session = state.get("session", 0) + 1
            await self.update_state(stream_id, lambda s: s.update(session=session))
            try:
                proc = await self._spawn(stream_id, record["url"], session)
            except OSError:
                log.exception("stream %d: cannot spawn ffmpeg", stream_id)
                raise stream_error("Cannot start stream") from None
            if not await self._opened(proc):
                await proc.stop(STOP_STEP_TIMEOUT)
                await self._end_run(stream_id, proc.run, "source could not be opened")
                log.warning("stream %d: source %s could not be opened", stream_id, record["url"])
                raise stream_error("Cannot start stream")
            now = int(time.time())
            await self.update_state(stream_id, lambda s: s.update(recording=True))
            await self.records.update(stream_id, lambda r: {**r, "start_date": now, "stop_date": None})
            recorder = Recorder(self, stream_id, record["url"], proc)
            self._recorders[stream_id] = recorder
            recorder.begin()

    async def stop(self, raw_id: Any) -> None:
        record = await self.record(raw_id)
        stream_id = record["id"]
        async with self._lock(stream_id):
            state = await self.read_state(stream_id)
            if not state.get("recording"):
                raise stream_error("Stream not started")
            recorder = self._recorders.get(stream_id)
            if recorder is None:  # not supervised (should not happen): act on the pid file
                proc, _ = await asyncio.to_thread(Segmenter.adopt_blocking, self.stream_dir(stream_id))
                recorder = Recorder(self, stream_id, record["url"], proc)
            if not await recorder.finish():
                raise stream_error("Cannot stop stream")
            self._recorders.pop(stream_id, None)
            now = int(time.time())
            await self.update_state(stream_id, lambda s: s.update(recording=False))
            await self.records.update(stream_id, lambda r: {**r, "stop_date": now})

    async def status(self, raw_id: Any) -> dict[str, Any]:
        record = await self.record(raw_id)
        try:
            return await self._status(record)
        except (OSError, ValueError, KeyError, TypeError):
            log.exception("stream %s: status", record.get("id"))
            raise stream_error("Cannot get stream status") from None

    async def _status(self, record: dict[str, Any]) -> dict[str, Any]:
        stream_id = record["id"]
        state = await self.read_state(stream_id)
        segments = await asyncio.to_thread(self.index(stream_id).segments)
        stretches = idx.groups(segments)
        session_of = {r["run"]: r.get("session") for r in state.get("runs", [])}
        gaps = [{"start": round(a, 3), "stop": round(b, 3), "duration": round(b - a, 3)}
                for a, b, ra, rb in idx.holes(stretches)
                if ra == rb or (session_of.get(ra) is not None and session_of.get(ra) == session_of.get(rb))]
        recorder = self._recorders.get(stream_id)
        proc = recorder.proc if recorder else None
        runs = state.get("runs", [])
        recording = bool(state.get("recording"))
        if not recording:
            phase = "stopped"
        elif proc is not None and proc.alive():
            phase = "recording"
        else:
            phase = "reconnecting"
        return {
            **{k: record.get(k) for k in ("create_date", "description", "id", "start_date", "stop_date", "url")},
            "recording": recording,
            "state": phase,
            "segment_time": self.config.stream_segment_time,
            "segments": len(segments),
            "bytes": sum(s.size for s in segments),
            "first_segment_start": round(segments[0].start, 3) if segments else None,
            "last_segment_end": round(max(s.end for s in segments), 3) if segments else None,
            "restarts": state.get("restarts", 0),
            "runs": len(runs),
            "current_run": proc.run if proc is not None and proc.alive() else None,
            "pid": proc.identity.pid if proc is not None and proc.alive() else None,
            "gaps": gaps[-100:],
            "gap_count": len(gaps),
            "last_run_end_reason": runs[-1].get("end_reason") if runs else None,
        }

    # -- runs -----------------------------------------------------------------
    async def _spawn(self, stream_id: int, url: str, session: int | None = None) -> Segmenter:
        def take_run(state: dict[str, Any]) -> int:
            run = state.get("next_run", 1)
            state["next_run"] = run + 1
            state.setdefault("runs", []).append({
                "run": run, "session": session if session is not None else state.get("session", 0),
                "spawned": round(time.time(), 3), "ended": None, "end_reason": None})
            return run

        run = await self.update_state(stream_id, take_run)
        cfg = self.config
        return await asyncio.to_thread(Segmenter.spawn_blocking, self.stream_dir(stream_id), url, run,
                                       cfg.stream_segment_time, cfg.stream_io_timeout)

    async def _opened(self, proc: Segmenter) -> bool:
        """True once the segmenter has begun its first segment (the source opened and probed)."""
        run_dir = proc.stream_dir / "segments" / idx.run_dir_name(proc.run)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stream_start_timeout
        while loop.time() < deadline:
            try:
                if await asyncio.to_thread(os.listdir, run_dir):
                    return True
            except FileNotFoundError:
                pass
            if not proc.alive():
                return False
            await asyncio.sleep(0.1)
        return False

    async def _end_run(self, stream_id: int, run: int, reason: str) -> dict[str, Any] | None:
        await self.finalize(stream_id, runs=[run])
        segments = await asyncio.to_thread(self.index(stream_id).run_segments, run)

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            for entry in state.get("runs", []):
                if entry["run"] == run and entry.get("ended") is None:
                    entry["ended"] = round(time.time(), 3)
                    entry["end_reason"] = reason
                    entry["segments"] = len(segments)
                    if segments:
                        entry["first_segment_start"] = round(segments[0].start, 3)
                        entry["last_segment_end"] = round(segments[-1].end, 3)
                    return dict(entry)
            return {}

        entry = await self.update_state(stream_id, change)
        if entry and entry.get("videostream_id") is not None:
            end = entry.get("last_segment_end") or entry["ended"]
            await self._live_end(entry["videostream_id"], end)
        return entry or None

    async def _run_began(self, stream_id: int, run: int, first: idx.Segment) -> None:
        """The run's first segment is listed: it appears as a live videostream."""
        catalogue = self.catalogue
        vid = None
        if catalogue is not None:
            start = int(first.start)
            link = f"/streams/{stream_id}/get_clip?start={start}"
            try:
                live = await catalogue.start_live(link, stream_id,
                                                  datetime.fromtimestamp(start, timezone.utc))
                vid = live.get("id")
            except Exception:
                log.exception("stream %d: could not register run %d as a live videostream", stream_id, run)

        def change(state: dict[str, Any]) -> None:
            for entry in state.get("runs", []):
                if entry["run"] == run:
                    entry["first_segment_start"] = round(first.start, 3)
                    if vid is not None:
                        entry["videostream_id"] = vid

        await self.update_state(stream_id, change)

    async def _live_end(self, vid: Any, end: float) -> None:
        catalogue = self.catalogue
        if catalogue is None:
            return
        try:
            await catalogue.end_live(vid, datetime.fromtimestamp(max(end, 0), timezone.utc))
        except Exception:
            log.exception("could not end live videostream %s", vid)


def _count_restart(state: dict[str, Any]) -> None:
    state["restarts"] = state.get("restarts", 0) + 1


class Recorder:
    """The supervisor of one started stream (one task)."""

    def __init__(self, service: StreamService, stream_id: int, url: str, proc: Segmenter | None) -> None:
        self.svc = service
        self.stream_id = stream_id
        self.url = url
        self.proc = proc
        self.task: asyncio.Task | None = None

    def begin(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._supervise(), name=f"stream-{self.stream_id}")

    async def _cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def detach(self) -> None:
        await self._cancel_task()
        if self.proc is not None:
            self.proc.release()

    async def finish(self) -> bool:
        """Stop supervising and end the segmenter gracefully; False if it will not die."""
        await self._cancel_task()
        proc = self.proc
        if proc is None:
            return True
        if not await proc.stop(STOP_STEP_TIMEOUT):
            return False
        await self.svc._end_run(self.stream_id, proc.run, "stopped")
        return True

    async def _supervise(self) -> None:
        svc, cfg = self.svc, self.svc.config
        backoff = Backoff(1.0, cfg.stream_restart_max_backoff, jitter=0)
        while True:
            if self.proc is None:
                spawn = asyncio.ensure_future(svc._spawn(self.stream_id, self.url))
                try:
                    self.proc = await asyncio.shield(spawn)
                except asyncio.CancelledError:
                    # The process may exist already: keep it so that stop/close can see it.
                    self.proc = await spawn
                    raise
                except Exception as exc:  # e.g. a full disk refusing the state write: try again later
                    delay = backoff.failed()
                    log.warning("stream %d: cannot start a run (%s); retrying in %.0fs", self.stream_id, exc,
                                delay)
                    await asyncio.sleep(delay)
                    continue
            proc = self.proc
            try:
                reason, recorded = await self._watch(proc)
            except Exception:
                log.exception("stream %d: watchdog failed", self.stream_id)
                reason, recorded = "watchdog error", False
            if proc.alive():
                await proc.stop(STOP_STEP_TIMEOUT)
            else:
                await asyncio.to_thread(proc.forget_blocking)
            delay = backoff.restart_delay(did_work=recorded)
            log.warning("stream %d: run %d ended (%s); restarting in %.0fs", self.stream_id, proc.run,
                        reason, delay)
            self.proc = None
            try:
                await svc._end_run(self.stream_id, proc.run, reason)
                await svc.update_state(self.stream_id, _count_restart)
            except Exception as exc:  # bookkeeping only (e.g. a full disk): the recording must go on
                log.warning("stream %d: could not record the end of run %d: %s", self.stream_id, proc.run, exc)
            await asyncio.sleep(delay)

    async def _watch(self, proc: Segmenter) -> tuple[str, bool]:
        """Until the run ends: why it ended, and whether it recorded anything."""
        svc, cfg = self.svc, self.svc.config
        seg_dir = svc.stream_dir(self.stream_id) / "segments"
        list_path = seg_dir / idx.list_name(proc.run)
        loop = asyncio.get_running_loop()
        last_key = None
        retry = False
        last_progress = loop.time()
        began = False
        state = await svc.read_state(self.stream_id)
        for entry in state.get("runs", []):
            if entry["run"] == proc.run and entry.get("first_segment_start") is not None:
                began = True
        limit = 2 * cfg.stream_segment_time + cfg.stream_stall_timeout
        while True:
            if not proc.alive():
                code = proc.returncode
                return (f"segmenter exited with status {code}" if code is not None else "segmenter exited"), began
            try:
                st = os.stat(list_path)
                key = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                key = None
            now = loop.time()
            if key != last_key or retry:
                retry = await svc.finalize(self.stream_id, live_run=proc.run, runs=[proc.run])
            if key != last_key:
                last_key = key
                last_progress = now
                if key is not None and not began:
                    segments = await asyncio.to_thread(svc.index(self.stream_id).run_segments, proc.run)
                    if segments:
                        began = True
                        await svc._run_began(self.stream_id, proc.run, segments[0])
            allowed = limit if began else limit + cfg.stream_start_timeout
            if now - last_progress > allowed:
                return f"stalled: no new segment for {now - last_progress:.0f}s", began
            await asyncio.sleep(POLL)
