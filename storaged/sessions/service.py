"""Sessions, races and events: validation, records, queries, split jobs.

Protocol
--------
*Records.*  ``<data>/sessions/<id>.json``, ``<data>/races/<id>.json`` and
``<data>/events/<id>.json`` (storaged.store.records: sequential ids, atomic
writes, per-record locks ``locks/<kind>/<id>.lock``).  A race and an event
carry their ``session_id``; an event may carry a ``race_id`` of the same
session.

*Catalogues.*  The three kinds are held in memory (storaged.store.catalogue:
compact rows, ids by session, by race and by type, and the events' time spans
in an interval index per session), built from the tree at start-up and kept
in step with every write under the record locks.  Lists and queries read
only the memory; the tree stays the truth.

*Membership lock.*  Everything that adds to a session or takes from it holds
the session's membership lock first and record locks after it, always in that
order.  Adding (create race/event, move an event to another race) holds it
*shared*, so creates in one session run concurrently; taking away (delete
race/session) and submitting a split hold it *exclusive* (in-process, plus
the file lock ``locks/sessions/<id>.children.lock``).  So a race can never be
created in a session being deleted, an event never points at a race being
deleted, and a split sees a consistent race set.

*Delete.*  A session is deleted children first (split jobs cancelled and
removed, then events, then races) and its own record last: a crash half way
leaves the session visible with fewer children, and DELETE again finishes
the job.  Deleting a race detaches its events (``race_id`` becomes null).
Clips already in the object store stay there (content-addressed objects may
be shared; ``DELETE /upload/<id>`` removes them).

*Split jobs.*  ``<data>/sessions/<id>.split/<job_id>/`` is a job directory
(storaged.jobs); ``job_id`` is a hash of the session id, its video, its race
set (ids and times) and the options, so asking twice answers the same job.
``<id>.split/latest.json`` names the job last asked for; GET reports that
one.  The worker only cuts and stores clips; the *daemon* writes the races'
``video_url`` when it sees the job done (a watcher task per running job, a
scan at start-up, and every status GET), under each race's record lock, and
only for races whose times still equal those the job cut and only for the
latest job, then drops ``applied.json`` into the job directory.  Why the
daemon and not the worker: the daemon stays the only writer of records, a
race edited while the job ran is not overwritten with a stale clip, and an
older job finishing late never undoes a newer one.  Applying is idempotent,
so a crash between the race writes and ``applied.json`` only means it is
done again.

*Readers* need no lock: they read old or new records, never torn ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from storaged.schema import MAX_SAFE_INT, documents, object_schema, schema_of
from storaged.errors import BadRequest, NotFound
from storaged.jobs.runner import JobRunner
from storaged.jobs.state import JobState
from storaged.store.atomic import SharedExclusive, async_lock, read_json_or, write_json
from storaged.store.catalogue import Catalogue
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore, linked_object, now_iso
from storaged.store.records import RecordStore

log = logging.getLogger("storaged.sessions")

SPLIT_KIND = "storaged.sessions.split:split_races"
APPLIED = "applied.json"
LATEST = "latest.json"
MAX_URL_CHARS = 8192
MAX_TYPE_CHARS = 200
# Session times and durations, in seconds (about 31,700 years): the catalogue keeps them as integer
# microseconds, and a float near the top of its range has none (1e307 s made creates answer 500).
MAX_SECONDS = 1e12
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


# -- validation ----------------------------------------------------------------
@documents({"type": "number", "minimum": 0, "maximum": MAX_SECONDS})
def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadRequest(f"property '{name}' must be a non-negative number")
    if value > MAX_SECONDS:
        raise BadRequest(f"property '{name}' must be at most {MAX_SECONDS:g} seconds")
    return value


@documents({"type": ["number", "null"], "minimum": 0, "maximum": MAX_SECONDS})
def _optional_number(name: str, value: Any) -> float | None:
    return None if value is None else _number(name, value)


@documents({"type": ["string", "null"], "minLength": 1, "maxLength": MAX_URL_CHARS, "pattern": r"\S"})
def _url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_URL_CHARS:
        raise BadRequest(f"property '{name}' must be a URL (a non-empty string) or null")
    return value.strip()


@documents({"type": "string", "minLength": 1, "maxLength": MAX_TYPE_CHARS, "pattern": r"\S"})
def _type(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TYPE_CHARS:
        raise BadRequest(f"property '{name}' must be a non-empty string of at most {MAX_TYPE_CHARS} characters")
    return value


@documents({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_SAFE_INT})
def _race_ref(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SAFE_INT:
        raise BadRequest(f"property '{name}' must be a race id (a positive integer) or null")
    return value


@documents({"type": "object"})
def _data(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"property '{name}' must be a JSON object")
    return value


_ID = {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INT}
_CREATED = {"type": "string", "description": "ISO 8601 UTC time of creation"}


class Schema:
    """A record's writable properties (each a documented check), required ones, defaults, read-only ones."""

    def __init__(self, what: str, fields: dict[str, Callable[[str, Any], Any]], required: set[str],
                 defaults: dict[str, Any], read_only: dict[str, dict[str, Any]]) -> None:
        self.what = what
        self.fields = fields
        self.required = required
        self.defaults = defaults
        self.read_only = read_only

    def check(self, body: Any, *, partial: bool) -> dict[str, Any]:
        """The cleaned properties of ``body``; BadRequest naming the first bad one, before any change."""
        if body is None and not self.required:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object with the {self.what}'s properties")
        out = {}
        for key, value in body.items():
            if key in self.read_only:
                raise BadRequest(f"property '{key}' is read-only")
            if key not in self.fields:
                raise BadRequest(f"unknown property '{key}' (a {self.what} has: {', '.join(self.fields)})")
            out[key] = self.fields[key](key, value)
        if not partial:
            for key in sorted(self.required):
                if key not in out:
                    raise BadRequest(f"property '{key}' is required")
            for key, value in self.defaults.items():
                out.setdefault(key, value)
        return out

    def body_schema(self, *, partial: bool) -> dict[str, Any]:
        """The JSON Schema ``check`` enforces (a PUT is ``partial``: nothing required)."""
        return object_schema({k: schema_of(f) for k, f in self.fields.items()}, () if partial else self.required)

    def record_schema(self) -> dict[str, Any]:
        """A stored record as answered: every property, read-only ones included."""
        props = {**self.read_only, **{k: schema_of(f) for k, f in self.fields.items()}}
        return object_schema(props, props, closed=False)


_OWNED = {"id": _ID, "session_id": _ID, "created": _CREATED}
SESSION = Schema("session", {"video_url": _url}, set(), {"video_url": None}, {"id": _ID, "created": _CREATED})
RACE = Schema("race", {"start_time": _number, "duration": _number, "video_url": _url},
              {"start_time", "duration"}, {"video_url": None}, _OWNED)
EVENT = Schema("event", {"time": _number, "duration": _optional_number, "type": _type, "race_id": _race_ref,
                         "data": _data},
               {"time", "type"}, {"duration": None, "race_id": None, "data": {}}, _OWNED)


# The body of POST /sessions/<id>/split_races (request_split checks it).
SPLIT_OPTIONS = object_schema({"accurate": {"type": "boolean", "default": False,
                                            "description": "re-encode for frame-exact cuts"}})


def micros(seconds: float | None) -> int | None:
    """Seconds as whole microseconds: the resolution of the events' interval index."""
    return None if seconds is None else round(seconds * 1_000_000)


def event_span(event: dict[str, Any]) -> tuple[int, int]:
    """Closed interval [time, time + duration] of an event, in microseconds."""
    start = event["time"]
    return micros(start), micros(start + (event.get("duration") or 0))


class SessionsService:
    def __init__(self, layout: Layout, objects: ObjectStore, jobs: JobRunner,
                 ensure_local: list | None = None) -> None:
        self.layout = layout
        self.objects = objects
        self.jobs = jobs
        # Coroutines ``hook(file_id, meta)`` run under the object's lock before a split reads a stored
        # video (the storage tier fetches evicted bytes back).
        self.ensure_local = ensure_local if ensure_local is not None else []
        self.sessions = RecordStore(layout, "sessions", catalogue=Catalogue("sessions"))
        self.races = RecordStore(layout, "races", catalogue=Catalogue("races", ("session_id",)))
        self.events = RecordStore(layout, "events", catalogue=Catalogue(
            "events", ("session_id", "race_id", "type"), span=event_span, span_group="session_id"))
        self.membership = SharedExclusive(
            lambda session_id: layout.lock_for("sessions", f"{session_id}.children"))
        self._watchers: dict[Path, asyncio.Task] = {}
        self._applying = asyncio.Lock()
        self._snapshot_check: asyncio.Task | None = None  # the watcher and a status GET may see the same job done

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Load the catalogues; apply splits that finished while the daemon was away; watch those still running."""
        await asyncio.gather(self.sessions.load(), self.races.load(), self.events.load())
        self._snapshot_check = asyncio.create_task(self._check_snapshots(), name="sessions-snapshot-check")
        for session_id, job_dir in await asyncio.to_thread(self._latest_jobs):
            try:
                state = await self.jobs.state(job_dir)
            except NotFound:
                continue
            if state.final:
                await self._apply(session_id, job_dir, state)
            else:
                self._watch(session_id, job_dir)

    async def _check_snapshots(self) -> None:
        for store in (self.sessions, self.races, self.events):
            try:
                await store.check_snapshot()
            except OSError as exc:
                log.warning("%s: checking the snapshot against the files failed: %s", store.kind, exc)

    async def close(self) -> None:
        tasks = list(self._watchers.values())
        if self._snapshot_check is not None:
            tasks.append(self._snapshot_check)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(self.sessions.close(), self.races.close(), self.events.close())

    def _latest_jobs(self) -> list[tuple[int, Path]]:
        out = []
        for d in sorted(self.sessions.dir.glob("*.split")) if self.sessions.dir.exists() else []:
            stem = d.name[:-len(".split")]
            job_id = (read_json_or(d / LATEST, {}) or {}).get("job_id")
            if stem.isdigit() and isinstance(job_id, str) and _JOB_ID.match(job_id):
                out.append((int(stem), d / job_id))
        return out

    def children_lock(self, session_id: int):
        """Exclusive membership of a session (taking children away, splitting)."""
        return self.membership.exclusive(session_id)

    def adding_to(self, session_id: int):
        """Shared membership of a session (adding children)."""
        return self.membership.shared(session_id)

    def split_dir(self, session_id: int) -> Path:
        return self.sessions.dir / f"{int(session_id)}.split"

    # -- sessions ----------------------------------------------------------------
    def list_sessions(self, *, after: int | None = None, limit: int | None = None) -> tuple[bytes, int | None]:
        """A JSON array of sessions in id order, and the cursor of the next page (None: no more)."""
        self.sessions.report_damaged()
        return _page(self.sessions.catalogue, {}, None, after, limit)

    async def create_session(self, body: Any) -> dict:
        props = SESSION.check(body, partial=False)
        return await self.sessions.create({**props, "created": now_iso()})

    async def get_session(self, session_id: int) -> dict:
        return await self.sessions.get(session_id)

    async def update_session(self, session_id: int, body: Any) -> dict:
        props = SESSION.check(body, partial=True)
        return await self.sessions.update(session_id, lambda rec: {**rec, **props})

    async def delete_session(self, session_id: int) -> dict:
        async with self.children_lock(session_id):
            session = await self.sessions.get(session_id)
            await self._drop_splits(session_id)
            for event_id in self.events.catalogue.select({"session_id": session_id}):
                await _delete_quiet(self.events, event_id)
            for race_id in self.races.catalogue.select({"session_id": session_id}):
                await _delete_quiet(self.races, race_id)
            await _delete_quiet(self.sessions, session_id)
            return session

    async def _drop_splits(self, session_id: int) -> None:
        split_dir = self.split_dir(session_id)
        job_dirs = await asyncio.to_thread(
            lambda: [p for p in split_dir.iterdir() if p.is_dir()] if split_dir.is_dir() else [])
        for job_dir in job_dirs:
            task = self._watchers.pop(job_dir, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            try:
                await self.jobs.cancel(job_dir, remove=True)
            except NotFound:
                pass
        await asyncio.to_thread(shutil.rmtree, split_dir, True)

    # -- races -------------------------------------------------------------------
    async def list_races(self, session_id: int, *, after: int | None = None,
                         limit: int | None = None) -> tuple[bytes, int | None]:
        await self.sessions.get(session_id)
        self.races.report_damaged()
        return _page(self.races.catalogue, {"session_id": session_id}, None, after, limit)

    async def create_race(self, session_id: int, body: Any) -> dict:
        props = RACE.check(body, partial=False)
        async with self.adding_to(session_id):
            await self.sessions.get(session_id)
            return await self.races.create({"session_id": session_id, **props, "created": now_iso()})

    async def get_race(self, race_id: int) -> dict:
        return await self.races.get(race_id)

    async def update_race(self, race_id: int, body: Any) -> dict:
        props = RACE.check(body, partial=True)
        return await self.races.update(race_id, lambda rec: {**rec, **props})

    async def delete_race(self, race_id: int) -> dict:
        race = await self.races.get(race_id)
        async with self.children_lock(race["session_id"]):
            race = await self.races.delete(race_id)
            for event_id in self.events.catalogue.select({"race_id": race_id}):
                try:
                    await self.events.update(event_id, lambda rec: {**rec, "race_id": None}
                                             if rec.get("race_id") == race_id else rec)
                except NotFound:
                    pass
            return race

    # -- events ------------------------------------------------------------------
    async def _check_race_of(self, session_id: int, race_id: int | None) -> None:
        if race_id is None:
            return
        try:
            race = await self.races.get(race_id)
        except NotFound:
            raise BadRequest(f"race_id {race_id} does not exist") from None
        if race.get("session_id") != session_id:
            raise BadRequest(f"race_id {race_id} does not belong to session {session_id}")

    async def create_event(self, session_id: int, body: Any) -> dict:
        props = EVENT.check(body, partial=False)
        async with self.adding_to(session_id):
            await self.sessions.get(session_id)
            await self._check_race_of(session_id, props["race_id"])
            return await self.events.create({"session_id": session_id, **props, "created": now_iso()})

    async def get_event(self, event_id: int) -> dict:
        return await self.events.get(event_id)

    async def update_event(self, event_id: int, body: Any) -> dict:
        props = EVENT.check(body, partial=True)
        event = await self.events.get(event_id)
        async with self.adding_to(event["session_id"]):
            if "race_id" in props:
                await self._check_race_of(event["session_id"], props["race_id"])
            return await self.events.update(event_id, lambda rec: {**rec, **props})

    async def delete_event(self, event_id: int) -> dict:
        return await self.events.delete(event_id)

    def query_events(self, *, session_id: int | None = None, race_id: int | None = None,
                     type: str | None = None, t_from: float | None = None, t_to: float | None = None,
                     after: int | None = None, limit: int | None = None) -> tuple[bytes, int | None]:
        """Events in id order, filtered, as a JSON array (and the next page's cursor).

        ``from``/``to`` keep the events whose span [time, time + duration]
        overlaps the closed range (to the microsecond).
        """
        if t_from is not None and t_to is not None and t_from > t_to:
            raise BadRequest("'from' must not be after 'to'")
        where = {k: v for k, v in (("session_id", session_id), ("race_id", race_id), ("type", type))
                 if v is not None}
        span = None if t_from is None and t_to is None else (micros(t_from), micros(t_to))
        self.events.report_damaged()
        return _page(self.events.catalogue, where, span, after, limit)

    async def session_events(self, session_id: int, **filters) -> tuple[bytes, int | None]:
        await self.sessions.get(session_id)
        return self.query_events(session_id=session_id, **filters)

    # -- splitting -------------------------------------------------------------
    async def resolve_source(self, video_url: str) -> tuple[str, str]:
        """(what ffmpeg reads, what identifies the video in the job id) for a session's video_url."""
        file_id = linked_object(video_url)
        if file_id is not None:
            try:
                path, meta = await self.objects.open_path(file_id)
                if self.ensure_local:
                    async with async_lock(self.layout.object_lock(file_id)):
                        for hook in self.ensure_local:
                            await hook(file_id, meta)
                return "file:" + str(path), "object:" + file_id
            except NotFound:
                if video_url.startswith("/"):
                    raise BadRequest(f"the session's video {video_url} is not in the store") from None
        parsed = urlparse(video_url)
        if parsed.scheme in ("http", "https") and parsed.netloc:
            return video_url, video_url
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            path = unquote(parsed.path)
            if not path.startswith("/"):
                raise BadRequest("a file URL must hold an absolute path")
            return "file:" + path, "file:" + path
        raise BadRequest("the session's video_url must be a /download/<file_id> link, an http(s) URL or a file URL")

    async def request_split(self, session_id: int, body: Any) -> dict:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object (or empty)")
        for key in body:
            if key not in SPLIT_OPTIONS["properties"]:
                raise BadRequest(f"unknown option '{key}' (split_races takes: {', '.join(SPLIT_OPTIONS['properties'])})")
        accurate = body.get("accurate", False)
        if not isinstance(accurate, bool):
            raise BadRequest("option 'accurate' must be true or false")
        async with self.children_lock(session_id):
            session = await self.sessions.get(session_id)
            if not session.get("video_url"):
                raise BadRequest(f"session {session_id} has no video_url to split")
            source, source_key = await self.resolve_source(session["video_url"])
            races = [{"race_id": r["id"], "start_time": r["start_time"], "duration": r["duration"]}
                     for r in map(self.races.catalogue.get, self.races.catalogue.select({"session_id": session_id}))]
            if not races:
                raise BadRequest(f"session {session_id} has no races to split")
            identity = {"session_id": session_id, "source": source_key, "accurate": accurate,
                        "races": [[r["race_id"], r["start_time"], r["duration"]] for r in races]}
            job_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
            job_dir = self.split_dir(session_id) / job_id
            args = {"session_id": session_id, "source": source, "races": races, "accurate": accurate}
            inputs = [linked_object(session["video_url"])] if source_key.startswith("object:") else []
            if inputs:
                args["file_id"] = inputs[0]  # its keyframe cache lives beside it
            state = await self.jobs.submit(job_dir, SPLIT_KIND, args, inputs=inputs,
                                           meta={"session_id": session_id, "job_id": job_id}, retry=True)
            await asyncio.to_thread(write_json, self.split_dir(session_id) / LATEST, {"job_id": job_id})
        if state.final:
            await self._apply(session_id, job_dir, state)
        else:
            self._watch(session_id, job_dir)
        return self._render(session_id, job_id, state)

    async def split_status(self, session_id: int) -> dict:
        await self.sessions.get(session_id)
        latest = await asyncio.to_thread(read_json_or, self.split_dir(session_id) / LATEST, {})
        job_id = (latest or {}).get("job_id")
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise NotFound(f"no split has been requested for session {session_id}")
        job_dir = self.split_dir(session_id) / job_id
        try:
            state = await self.jobs.state(job_dir)
        except NotFound:
            raise NotFound(f"no split has been requested for session {session_id}") from None
        if state.final:
            await self._apply(session_id, job_dir, state)
        return self._render(session_id, job_id, state)

    def _render(self, session_id: int, job_id: str, state: JobState) -> dict:
        args = state.config.get("args", {})
        out: dict[str, Any] = {
            "session_id": session_id,
            "job_id": job_id,
            "status": state.status,
            "progress": state.progress,
            "status_url": f"/sessions/{session_id}/split_races",
            "requested": state.config.get("requested"),
            "accurate": args.get("accurate", False),
        }
        if state.status == "done" and state.results:
            out["video_duration"] = state.results.get("video_duration")
            out["races"] = state.results.get("races", [])
        else:
            out["races"] = [dict(r) for r in args.get("races", [])]
        if state.status in ("failed", "cancelled"):
            out["error_message"] = state.error or state.status
            out["stderr"] = state.stderr
        return out

    def _watch(self, session_id: int, job_dir: Path) -> None:
        if job_dir in self._watchers:
            return
        task = asyncio.create_task(self._watch_job(session_id, job_dir), name=f"split-watch-{job_dir.name}")
        self._watchers[job_dir] = task
        task.add_done_callback(lambda t: self._watchers.pop(job_dir, None) if self._watchers.get(job_dir) is t
                               else None)

    async def _watch_job(self, session_id: int, job_dir: Path) -> None:
        try:
            while True:
                try:
                    state = await self.jobs.wait(job_dir, timeout=3600)
                    break
                except TimeoutError:
                    continue
            await self._apply(session_id, job_dir, state)
        except NotFound:
            return  # the session (and its jobs) went away
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("applying split %s failed; the next status request retries", job_dir)

    async def _apply(self, session_id: int, job_dir: Path, state: JobState) -> None:
        """Write the clips' links into the races (idempotent; see the module protocol)."""
        if state.status != "done" or not state.results:
            return
        if await asyncio.to_thread((job_dir / APPLIED).exists):
            return
        latest = await asyncio.to_thread(read_json_or, self.split_dir(session_id) / LATEST, {})
        if (latest or {}).get("job_id") != job_dir.name:
            return
        async with self._applying:
            if await asyncio.to_thread((job_dir / APPLIED).exists):
                return
            entries = [e for e in state.results.get("races", []) if e.get("video_url")]
            # Each race has its own lock and file: write them side by side (the fsyncs overlap).
            outcome = await asyncio.gather(*(self._link_race(session_id, e) for e in entries))
            applied = [e["race_id"] for e, ok in zip(entries, outcome) if ok]
            skipped = [e["race_id"] for e, ok in zip(entries, outcome) if not ok]
            await asyncio.to_thread(write_json, job_dir / APPLIED, {"applied": applied, "skipped": skipped,
                                                                     "at": now_iso()})

    async def _link_race(self, session_id: int, entry: dict) -> bool:
        def change(rec: dict) -> dict:
            if (rec.get("session_id") != session_id or rec.get("start_time") != entry["start_time"]
                    or rec.get("duration") != entry["duration"]):
                raise _Stale()
            return {**rec, "video_url": entry["video_url"]}

        try:
            await self.races.update(entry["race_id"], change)
            return True
        except (NotFound, _Stale):
            return False


class _Stale(Exception):
    """The race changed since the split was asked: its clip no longer fits."""


def _page(catalogue: Catalogue, where: dict, span, after: int | None,
          limit: int | None) -> tuple[bytes, int | None]:
    ids = catalogue.select(where, span=span, after=after, limit=None if limit is None else limit + 1)
    more = limit is not None and len(ids) > limit
    if more:
        del ids[limit:]
    return catalogue.render(ids), ids[-1] if more else None


async def _delete_quiet(store: RecordStore, record_id: int) -> None:
    try:
        await store.delete(record_id)
    except NotFound:
        pass
