"""fsck: each planted fault is found (non-zero exit); --repair leaves a tree fsck passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from storaged.supervise.process import ProcessIdentity
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore
from tests.helpers import dead_process
from tests.ops_helpers import backdate


def fsck(data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", "fsck", "--data-dir", str(data), *extra],
                          capture_output=True, text=True, timeout=120)


def build_tree(data: Path) -> dict:
    """A healthy tree: three objects, a finished analysis, a record, a queued job with its entry."""
    layout = Layout(data)
    layout.ensure()
    store = ObjectStore(layout, max_size=1 << 30)
    ids = []
    for n in range(3):
        src = layout.tmp / f"src{n}"
        src.write_bytes(os.urandom(20_000 + n))
        # The last one is named like JSON but is not: an object's own bytes are never parsed.
        ids.append(store.put_file_blocking(src, "notes.json" if n == 2 else f"video{n}.mp4")["file_id"])
    aid = "a" * 40
    job = layout.object_dir(ids[1]) / "analysis" / aid
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps({"kind": "k", "args": {}}))
    (job / "thumb.jpg").write_bytes(b"jpeg")
    (job / "results.json").write_text(json.dumps(
        {"status": "done", "sprite": f"/download/{ids[1]}/analysis/{aid}/thumb.jpg"}))
    (data / "sessions").mkdir()
    (data / "sessions" / "1.json").write_text(json.dumps({"id": 1, "name": "race day"}))
    queued = layout.object_dir(ids[2]) / "analysis" / ("b" * 40)
    queued.mkdir(parents=True)
    (queued / "config.json").write_text(json.dumps({"kind": "k", "args": {}}))
    (data / "jobs" / "queue").mkdir(parents=True)
    rel = os.path.relpath(queued, data)
    (data / "jobs" / "queue" / "00000000000000000001-aaaa.json").write_text(json.dumps({"job_dir": rel}))
    return {"layout": layout, "ids": ids, "job": job}


def test_clean_tree_passes(tmp_path: Path):
    data = tmp_path / "data"
    build_tree(data)
    out = fsck(data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked 3 objects" in out.stdout and "0 problem(s)" in out.stdout


def test_each_planted_fault_is_found_and_repair_leaves_a_clean_tree(tmp_path: Path):
    data = tmp_path / "data"
    tree = build_tree(data)
    layout: Layout = tree["layout"]
    ids = tree["ids"]
    # 1. a flipped byte in an object
    flipped = layout.object_dir(ids[0]) / "video0.mp4"
    raw = bytearray(flipped.read_bytes())
    raw[100] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    # 2. a truncated JSON record
    record = data / "sessions" / "1.json"
    record.write_text(record.read_text()[:9])
    # 3. a stale pid file: a job whose worker died without results, still in the queue
    identity = dead_process()
    stale = layout.object_dir(ids[2]) / "analysis" / ("c" * 40)
    stale.mkdir(parents=True)
    (stale / "config.json").write_text(json.dumps({"kind": "k", "args": {}}))
    (stale / "inrun.pid").write_text(json.dumps(identity.to_json()))
    (data / "jobs" / "queue" / "00000000000000000002-bbbb.json").write_text(
        json.dumps({"job_dir": os.path.relpath(stale, data)}))
    # 4. stray temp files: one beside the records, one old entry in tmp/ (young ones are writes in flight)
    stray = data / "sessions" / ".2.json.0123456789ab.tmp"
    stray.write_text("{")
    backdate(stray, 7200)
    old_tmp = layout.tmp / "upload-deadbeef.tmp"
    old_tmp.write_bytes(b"partial")
    backdate(old_tmp, 7200)
    young_tmp = layout.tmp / "upload-inflight.tmp"
    young_tmp.write_bytes(b"being written")
    # 5. a queue entry pointing nowhere; 6. results naming an output that is gone
    (data / "jobs" / "queue" / "00000000000000000003-cccc.json").write_text(
        json.dumps({"job_dir": "aa/" + "b" * 62 + "/analysis/" + "d" * 40}))
    (tree["job"] / "thumb.jpg").unlink()

    found = fsck(data)
    assert found.returncode == 1, found.stdout + found.stderr
    text = found.stdout
    assert f"damaged object {ids[0][:2]}/{ids[0][2:]}: content does not hash to its id" in text
    assert "damaged JSON sessions/1.json" in text
    assert f"stale job {os.path.relpath(stale, data)}: pid file of a dead worker, and no results" in text
    assert "stray temp sessions/.2.json.0123456789ab.tmp" in text
    assert "stray temp tmp/upload-deadbeef.tmp" in text
    assert "upload-inflight" not in text
    assert "dangling queue entry jobs/queue/00000000000000000003-cccc.json" in text
    assert f"damaged job {os.path.relpath(tree['job'], data)}: results list outputs that are missing" in text
    assert "7 problem(s)" in text
    # Nothing was changed by looking.
    assert flipped.exists() and stray.exists() and (stale / "inrun.pid").exists()

    repaired = fsck(data, "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr
    assert "7 problem(s), 7 repaired" in repaired.stdout
    lost = data / "lost+found"
    assert (lost / ids[0][:2] / ids[0][2:] / "video0.mp4").read_bytes() == bytes(raw)
    assert (lost / "sessions" / "1.json").exists() and not record.exists()
    results = json.loads((stale / "results.json").read_text())
    assert results["status"] == "failed" and "interrupted" in results["error_message"]
    assert not (stale / "inrun.pid").exists()
    assert not stray.exists() and not old_tmp.exists() and young_tmp.exists()
    assert not (data / "jobs" / "queue" / "00000000000000000003-cccc.json").exists()
    assert not (data / "jobs" / "queue" / "00000000000000000002-bbbb.json").exists()
    assert (data / "jobs" / "queue" / "00000000000000000001-aaaa.json").exists()  # a healthy queued job stays

    again = fsck(data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 problem(s)" in again.stdout


def test_a_finished_job_not_yet_reaped_is_not_a_dangling_entry_however_long_it_waited(tmp_path: Path):
    """Found by the 500-kill loop: a job queued for 80 s ran for 0.7 s, and fsck (run beside the live
    daemon) saw it finished, its worker gone and its entry still there, in the instant before the runner
    reaped it.  The grace counts from when the job finished, not from when it was queued."""
    data = tmp_path / "data"
    tree = build_tree(data)
    job = tree["layout"].object_dir(tree["ids"][0]) / "analysis" / ("f" * 40)
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps({"kind": "k", "args": {}}))
    identity = dead_process()
    (job / "inrun.pid").write_text(json.dumps(identity.to_json()))  # the runner has not reaped it yet
    (job / "results.json").write_text(json.dumps({"status": "done"}))  # finished just now
    entry = data / "jobs" / "queue" / "00000000000000000007-ffff.json"
    entry.write_text(json.dumps({"job_dir": os.path.relpath(job, data)}))
    backdate(entry, 7200)  # it waited two hours for its turn

    young = fsck(data)
    assert young.returncode == 0, young.stdout + young.stderr
    assert "0 problem(s)" in young.stdout

    # Finished two hours ago and still queued: nothing reaped it, that entry is dangling.
    (job / "inrun.pid").unlink()
    backdate(job / "results.json", 7200)
    old = fsck(data)
    assert old.returncode == 1, old.stdout + old.stderr
    assert f"dangling queue entry jobs/queue/{entry.name}: names {os.path.relpath(job, data)}, " \
           "which has finished" in old.stdout


def test_fsck_passes_the_tree_of_a_live_daemon(tmp_path: Path, daemon):
    """A running daemon's tree is clean to fsck; its young temps are not strays."""
    data = tmp_path / "data"
    build_tree(data)
    for entry in (data / "jobs" / "queue").iterdir():
        entry.unlink()
    d = daemon(data_dir=data)
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{d.url}/upload?name=x.bin", data=os.urandom(5000),
                                                       method="POST"), timeout=30) as resp:
        assert resp.status == 200
    out = fsck(data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checked 4 objects" in out.stdout


def test_fsck_sees_strays_junk_in_the_queue_dangling_references_and_orphan_events(tmp_path: Path):
    data = tmp_path / "data"
    tree = build_tree(data)
    missing = "f" * 64
    # strays: at the top of the root, and in jobs/
    (data / "notes.txt").write_text("left here by someone")
    (data / "jobs" / "old-runner-state").mkdir()
    # junk in the queue: a file that is not an entry, and an entry that is not JSON
    (data / "jobs" / "queue" / "README").write_text("junk")
    (data / "jobs" / "queue" / "00000000000000000009-eeee.json").write_text("{not json")
    # references to an object that is not stored: a session's video, a queued job's declared input
    (data / "sessions" / "2.json").write_text(json.dumps({"id": 2, "video_url": f"/download/{missing}/x.mp4"}))
    waiting = data / "sessions" / "2.split" / "j1"
    waiting.mkdir(parents=True)
    (waiting / "config.json").write_text(json.dumps({"kind": "k", "args": {}, "inputs": {"objects": [missing]}}))
    (data / "jobs" / "queue" / "00000000000000000010-ffff.json").write_text(
        json.dumps({"job_dir": os.path.relpath(waiting, data)}))
    # an event whose session is gone (session 1 exists, 7 does not)
    (data / "events").mkdir()
    (data / "events" / "1.json").write_text(json.dumps({"id": 1, "session_id": 1, "time": 1, "type": "x"}))
    (data / "events" / "2.json").write_text(json.dumps({"id": 2, "session_id": 7, "time": 2, "type": "x"}))

    found = fsck(data)
    assert found.returncode == 1, found.stdout + found.stderr
    text = found.stdout
    assert "stray notes.txt: not an object, the store's or any family's" in text
    assert "stray jobs/old-runner-state: only queue/ belongs in jobs/" in text
    assert "junk queue entry jobs/queue/README" in text
    assert "dangling queue entry jobs/queue/00000000000000000009-eeee.json: unreadable" in text
    assert f"dangling reference sessions/2: points to object {missing}, which is not stored" in text
    assert f"dangling reference sessions/2.split/j1: points to object {missing}" in text
    assert "orphan event events/2.json: its session 7 does not exist" in text
    assert "events/1.json" not in text
    assert "7 problem(s)" in text

    repaired = fsck(data, "--repair")
    lines = [line for line in repaired.stdout.splitlines() if " -> " in line]
    assert any(line.startswith("stray notes.txt") and "-> moved to lost+found/notes.txt" in line for line in lines)
    assert any(line.startswith("orphan event events/2.json") and "moved to lost+found/events/2.json" in line
               for line in lines)
    assert any(line.startswith("dangling reference sessions/2:") and "-> left as is" in line for line in lines)
    assert any(line.startswith("junk queue entry") and "-> moved to lost+found/jobs/queue/README" in line
               for line in lines)
    assert (data / "lost+found" / "notes.txt").read_text() == "left here by someone"
    assert (data / "sessions" / "2.json").exists()  # the user's record is never touched
    assert not (data / "events" / "2.json").exists() and (data / "events" / "1.json").exists()
    # What is left: only the dangling references (the record is the user's to fix).
    again = fsck(data)
    left = [line for line in again.stdout.splitlines() if not line.startswith("fsck:")]
    assert left and all(line.startswith("dangling reference") for line in left), again.stdout


def test_a_worker_that_finishes_while_fsck_looks_is_not_a_stale_job(tmp_path: Path, monkeypatch):
    """fsck reads the queued job's pid file (a live worker), then the worker writes its results, removes
    its pid file and exits before fsck asks whether it lives: a clean finish, not a stale job."""
    import io

    from storaged.config import Config
    from storaged.families import providers
    from storaged.ops.fsck import Fsck
    from storaged.supervise.process import write_pidfile
    data = tmp_path / "data"
    tree = build_tree(data)
    queued = tree["layout"].object_dir(tree["ids"][2]) / "analysis" / ("b" * 40)
    write_pidfile(queued / "inrun.pid", ProcessIdentity.of(os.getpid()))

    def worker_finishes_and_exits(self) -> bool:
        (queued / "results.json").write_text(json.dumps({"status": "done"}))
        (queued / "inrun.pid").unlink(missing_ok=True)
        return False

    monkeypatch.setattr(ProcessIdentity, "alive", worker_finishes_and_exits)
    out = io.StringIO()
    config = Config(data_dir=data)
    code = Fsck(tree["layout"], config, providers(tree["layout"], config), out=out).run()
    assert "stale job" not in out.getvalue()
    assert code == 0, out.getvalue()
