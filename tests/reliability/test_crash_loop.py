"""A real daemon under a mixed workload, SIGKILLed at random instants and restarted, many times.

Each round runs uploads, record writes (sessions, races, events, videostreams),
analyses (dummy and clip) and clip requests against a stream that records a
live UDP source the whole time, kills the daemon with SIGKILL at a random
instant, and then proves:

* every acknowledged upload is present and hashes to its id, every
  acknowledged record write reads back equal (an unacknowledged one in flight
  at the kill may have landed or not, but nothing else);
* nothing is half-visible: ``storaged fsck`` (a subprocess) exits 0 — every
  object complete, every JSON file parses, no stale job state, no dangling
  queue entry, no old temp.  fsck runs *after* the restart: between the kill
  and the restart the tree legitimately holds a dead daemon's in-flight state
  that start-up resolves (a worker that finished while no daemon watched keeps
  its queue entry until the next daemon reaps it), and fsck is documented as
  safe against a live daemon;
* every acknowledged analysis still exists, and no job is left "running"
  with a dead worker: at the end each one is done or failed;
* at the end, once the stream is stopped and the daemon is stopped, no
  process whose command line mentions the test's directory survives.

``STORAGED_CRASH_LOOPS`` sets the number of kills (30 by default; the
500-kill run is ``bench/crash_loop.py --kills 500``, which runs this test and
reads the figures it writes to ``STORAGED_CRASH_REPORT``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import Daemon, json_of, make_video, sha256_file, wait_until
from tests.live_source import LiveSource, kill_processes_under, processes_under

LOOPS = int(os.environ.get("STORAGED_CRASH_LOOPS", "30"))
SEED = int(os.environ.get("STORAGED_CRASH_SEED", "20240607"))
# Unix time after which no further kill starts (a long run that must end by a given time reports
# the kills it made); unset: no deadline.
DEADLINE = float(os.environ.get("STORAGED_CRASH_DEADLINE", "inf"))
# Where the figures go as JSON: rewritten after every round ("final": false, so a long run's progress can
# be read) and once more when the test has passed ("final": true); unset: nowhere.
REPORT = os.environ.get("STORAGED_CRASH_REPORT")
# How long a (re)start may take to answer /healthz, and fsck to finish: waits, not promises.  A 500-kill
# run lasts an hour on a shared 2-core machine, and a restart starved by other work once took over 60 s;
# what the test proves is that the daemon comes up and every acknowledged write is intact, not how fast.
START_WAIT = 600
FSCK_WAIT = 600
# A hang guard, not a time goal: each round is bounded by the waits above, and a round takes seconds
# (7-9 s a kill on a loaded 2-core machine), so the guard grows with the kills asked for (1200 s for the
# default 30; the suite's 300 s cut this test off mid-run in CI).
HANG_GUARD = 300 + 30 * LOOPS
DAEMON_ARGS = ("--stream-segment-time", "2", "--stream-io-timeout", "3", "--stream-start-timeout", "20",
               "--stream-clip-wait", "0.3", "--job-concurrency", "2", "--min-free", "0",
               "--janitor-interval", "0", "--metrics-interval", "1h")
MISSING = object()  # the record must not exist (never created, or deletion acknowledged)
KINDS = ("sessions", "races", "events", "videostreams")


class Ledger:
    """What the daemon acknowledged, and what was in flight when it died."""

    def __init__(self) -> None:
        self.objects: dict[str, int] = {}          # file_id -> size
        self.records: dict[tuple[str, int], Any] = {}   # (kind, id) -> expected projection or MISSING
        self.pending: dict[tuple[str, int], Any] = {}   # a write in flight: it may or may not have landed
        self.analyses: set[tuple[str, str]] = set()     # (file_id, analysis_id)
        self.writes = 0
        self.hashed: set[str] = set()  # objects whose bytes were hashed after an earlier kill
        self.checked_objects = 0  # object checks summed over rounds (one object counts once per round)
        self.checked_records = 0

    async def write(self, key: tuple[str, int], value: Any, request) -> bool:
        """Run ``request`` (answers True when acknowledged) that changes ``key`` to ``value``."""
        self.pending[key] = value
        ok = await request()
        del self.pending[key]
        if ok:
            self.records[key] = value
            self.writes += 1
        return ok


def project(kind: str, record: dict) -> Any:
    """The part of a record a writer controls (the rest, like `created`, the daemon sets)."""
    if kind == "sessions":
        return record.get("video_url")
    if kind == "races":
        return (record.get("start_time"), record.get("duration"))
    if kind == "events":
        return (record.get("time"), record.get("type"))
    return {k: record.get(k) for k in ("id", "stream_url", "startTime", "endTime", "capturesource")}


def read_record(data_dir: Path, kind: str, record_id: int) -> Any:
    path = data_dir / kind / f"{record_id}.json"
    try:
        return project(kind, json.loads(path.read_bytes()))
    except FileNotFoundError:
        return MISSING


def check_acknowledged(data_dir: Path, ledger: Ledger, full: bool = False) -> None:
    """Blocking: every acknowledged object and record is there and intact.

    An object is hashed the first time it is checked (``full``: every time); later checks
    compare meta, link and size, so long loops stay linear in the data written."""
    for oid, size in ledger.objects.items():
        obj = data_dir / oid[:2] / oid[2:]
        meta = json.loads((obj / "meta.json").read_bytes())
        assert meta["file_id"] == oid and meta["size"] == size, f"object {oid}: meta disagrees"
        if full or oid not in ledger.hashed:
            assert sha256_file(obj / meta["stored_name"]) == oid, f"object {oid} holds other bytes"
            ledger.hashed.add(oid)
        else:
            # Hashed after an earlier kill; fsck (run after every restart) re-hashes every object.
            assert os.stat(obj / meta["stored_name"]).st_size == size, f"object {oid} changed size"
        assert os.readlink(obj / "the_file") == meta["stored_name"]
        ledger.checked_objects += 1
    for key, expected in list(ledger.records.items()):
        kind, record_id = key
        found = read_record(data_dir, kind, record_id)
        allowed = [expected] + ([ledger.pending[key]] if key in ledger.pending else [])
        assert any(found is a if a is MISSING else found == a for a in allowed), \
            f"{kind}/{record_id}: on disk {found!r}, acknowledged {expected!r}"
        # What is on disk now is what every later read will see: it becomes the expectation.
        ledger.records[key] = found
        ledger.checked_records += 1
    ledger.pending.clear()
    for file_id, aid in ledger.analyses:
        if file_id in ledger.objects:
            job = data_dir / file_id[:2] / file_id[2:] / "analysis" / aid
            assert (job / "config.json").is_file(), f"acknowledged analysis {aid} lost"


def fsck(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", "fsck", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=FSCK_WAIT, stdin=subprocess.DEVNULL)


class Workload:
    """Mixed traffic against one daemon until cancelled (or until the daemon dies under it)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, ledger: Ledger, rng: random.Random,
                 video_id: str, stream_id: int, round_no: int) -> None:
        self.url, self.http, self.ledger, self.rng = url, session, ledger, rng
        self.video_id, self.stream_id, self.round = video_id, stream_id, round_no

    async def run(self) -> None:
        tasks = [self.uploads(), self.sessions(), self.videostreams(), self.analyses(), self.clips()]
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            # The daemon dying under a request is the point; any other failure (a wrong
            # answer while it was alive) is a finding.
            if not isinstance(outcome, (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError)):
                raise outcome

    async def _json(self, method: str, path: str, **kw) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, **kw) as resp:
            return resp.status, await json_of(resp)

    async def uploads(self) -> None:
        n = 0
        while True:
            n += 1
            body = self.rng.randbytes(self.rng.randrange(1, 200_000))
            status, out = await self._json("POST", "/upload", params={"name": f"r{self.round}-{n}.bin"},
                                           data=body)
            assert status == 200, out
            assert out["file_id"] == hashlib.sha256(body).hexdigest()
            self.ledger.objects[out["file_id"]] = len(body)

    async def sessions(self) -> None:
        led = self.ledger
        while True:
            url = f"/download/{self.video_id}/r{self.round}.mp4"
            status, out = await self._json("POST", "/sessions", json={"video_url": url})
            assert status == 201, out
            sid = out["id"]
            led.records[("sessions", sid)] = url
            new_url = url + "?v=2"

            async def put_session() -> bool:
                status, out = await self._json("PUT", f"/sessions/{sid}", json={"video_url": new_url})
                return status == 200
            await led.write(("sessions", sid), new_url, put_session)
            status, out = await self._json("POST", f"/sessions/{sid}/races",
                                           json={"start_time": 1.5, "duration": 2})
            assert status == 201, out
            rid = out["id"]
            led.records[("races", rid)] = (1.5, 2)

            async def put_race() -> bool:
                status, _ = await self._json("PUT", f"/races/{rid}", json={"start_time": 2.5})
                return status == 200
            await led.write(("races", rid), (2.5, 2), put_race)
            status, out = await self._json("POST", f"/sessions/{sid}/events",
                                           json={"time": 3.0, "type": "lap", "race_id": rid})
            assert status == 201, out
            eid = out["id"]
            led.records[("events", eid)] = (3.0, "lap")

            async def put_event() -> bool:
                status, _ = await self._json("PUT", f"/events/{eid}", json={"type": "crash"})
                return status == 200
            await led.write(("events", eid), (3.0, "crash"), put_event)

    async def videostreams(self) -> None:
        led = self.ledger
        n = 0
        while True:
            n += 1
            body = {"stream_url": f"rtsp://cam/{self.round}/{n}", "startTime": "2024-01-01T10:00:00Z",
                    "endTime": "2024-01-01T11:00:00Z", "capturesource": 42}
            status, out = await self._json("POST", "/api/v1/videostreams", json=body)
            assert status == 200, out
            key = ("videostreams", out["id"])
            led.records[key] = project("videostreams", out)
            changed = {**project("videostreams", out), "endTime": "2024-01-01T12:00:00Z"}

            async def patch() -> bool:
                status, _ = await self._json("PATCH", f"/api/v1/videostreams/{out['id']}",
                                             json={"endTime": "2024-01-01T12:00:00Z"})
                return status == 200
            await led.write(key, changed, patch)
            if n % 2 == 0:
                async def delete() -> bool:
                    status, _ = await self._json("DELETE", f"/api/v1/videostreams/{out['id']}")
                    return status == 200
                await led.write(key, MISSING, delete)

    async def analyses(self) -> None:
        n = 0
        while True:
            n += 1
            body = self.rng.randbytes(1000)
            status, up = await self._json("POST", "/upload", params={"name": "a.bin"}, data=body)
            assert status == 200, up
            self.ledger.objects[up["file_id"]] = len(body)
            for file_id, analysis, args in (
                    (up["file_id"], "dummy", {"seconds": round(self.rng.uniform(0.2, 1.5), 3)}),
                    (self.video_id, "clip", {"start": round(self.rng.uniform(0, 7), 3), "duration": 1})):
                status, out = await self._json("POST", "/analyse",
                                               json={"file_id": file_id, "analysis": analysis, "args": args})
                assert status == 200, out
                self.ledger.analyses.add((file_id, out["analysis_id"]))
            await asyncio.sleep(0.05)

    async def clips(self) -> None:
        while True:
            status, st = await self._json("GET", f"/streams/{self.stream_id}/status")
            assert status == 200, st
            end = st.get("last_segment_end")
            if end:
                start = end - self.rng.uniform(1, 3)
                status, out = await self._json("GET", f"/streams/{self.stream_id}/get_clip",
                                               params={"start": f"{start:.3f}", "stop": f"{end:.3f}"})
                assert status == 200, out
            await asyncio.sleep(0.1)


@pytest.mark.timeout(HANG_GUARD)
async def test_sigkill_loop_under_mixed_workload(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    video = make_video(tmp_path / "v.mp4", seconds=10)
    source = LiveSource().start()
    d = Daemon(data_dir, *DAEMON_ARGS)
    rng = random.Random(SEED)
    ledger = Ledger()
    kills = fsck_runs = 0
    slowest_start = 0.0

    def report(final: bool, fsck_last: str = "") -> None:
        if REPORT:
            Path(REPORT).write_text(json.dumps({
                "final": final, "kills": kills, "seed": SEED, "acknowledged_uploads": len(ledger.objects),
                "acknowledged_records": len(ledger.records), "acknowledged_record_writes": ledger.writes,
                "acknowledged_analyses": len(ledger.analyses), "object_checks": ledger.checked_objects,
                "record_checks": ledger.checked_records, "fsck_runs": fsck_runs, "fsck_failures": 0,
                "slowest_start_s": round(slowest_start, 1), "fsck_last": fsck_last,
            }, indent=2))

    try:
        d.start(timeout=START_WAIT)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(f"{d.url}/upload", params={"name": "v.mp4"}, data=video.read_bytes()) as r:
                video_id = (await r.json())["file_id"]
            ledger.objects[video_id] = video.stat().st_size
            async with http.post(f"{d.url}/streams/create", data={"url": source.url}) as r:
                stream_id = (await r.json())["stream_id"]
            async with http.post(f"{d.url}/streams/{stream_id}/start") as r:
                assert r.status == 200, await r.text()

            for round_no in range(LOOPS):
                if time.time() > DEADLINE:
                    break
                work = asyncio.create_task(
                    Workload(d.url, http, ledger, rng, video_id, stream_id, round_no).run())
                await asyncio.sleep(rng.uniform(0.05, 0.8))  # a random instant to kill at, not a synchronisation
                d.kill()
                kills += 1
                await asyncio.wait_for(work, 60)  # every request fails fast once the daemon is gone
                await asyncio.to_thread(check_acknowledged, data_dir, ledger)
                started = time.monotonic()
                d.start(timeout=START_WAIT)
                slowest_start = max(slowest_start, time.monotonic() - started)
                checked = await asyncio.to_thread(fsck, data_dir)
                assert checked.returncode == 0, f"round {round_no}: fsck:\n{checked.stdout}\n{checked.stderr}"
                fsck_runs += 1
                report(final=False)

            assert ledger.objects and ledger.writes and ledger.analyses, "the workload never got acknowledged"
            # The stream kept recording through every kill: its runs were adopted, not lost.
            async with http.get(f"{d.url}/streams/{stream_id}/status") as r:
                status = await r.json()
            assert status["recording"] and status["segments"] > 0
            async with http.post(f"{d.url}/streams/{stream_id}/stop") as r:
                assert r.status == 200, await r.text()

            # Running work was adopted (and finished) or marked failed: nothing stays running.
            async def all_final():
                for file_id, aid in sorted(ledger.analyses):
                    async with http.get(f"{d.url}/results/{file_id}/{aid}") as r:
                        if r.status == 202:
                            return False
                        body = await json_of(r)
                        assert r.status == 200 or body.get("status") == "failed", body
                return True
            await wait_until(all_final, timeout=START_WAIT, interval=0.2, what="every analysis finished or failed")
        assert d.stop() == 0
        checked = await asyncio.to_thread(fsck, data_dir)
        assert checked.returncode == 0, checked.stdout
        fsck_runs += 1
        await asyncio.to_thread(check_acknowledged, data_dir, ledger, True)
        # Orphans: an in-flight clip cut may still be finishing after the last kill; give it time.
        await wait_until(lambda: asyncio.to_thread(lambda: not processes_under(tmp_path)), timeout=30,
                         what="no process of the test left")
    finally:
        d.kill()
        source.stop()
        leftover = kill_processes_under(tmp_path)
    assert not leftover, f"processes survived the test: {leftover}"
    report(final=True, fsck_last=checked.stdout.strip().splitlines()[-1] if checked.stdout.strip() else "")
