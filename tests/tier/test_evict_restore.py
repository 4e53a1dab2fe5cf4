"""Eviction, read-through, fetch-back, a fleet on one bucket, restore: against a real Swift (S3 API)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import wait_until_sync
from tests.swift_engine import SwiftEngine
from tests.tier.conftest import TIER_ENV, tier_args
from tests.tier.test_replicate import http, remote_json, tier_status, upload, wait_drained


def storaged(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storaged", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or TIER_ENV)})


def object_bytes(data_dir: Path, oid: str) -> Path:
    meta = json.loads((data_dir / oid[:2] / oid[2:] / "meta.json").read_text())
    return data_dir / oid[:2] / oid[2:] / meta["stored_name"]


def evict_all(d, swift: SwiftEngine, bucket: str, quota: int) -> str:
    """One janitor pass (`storaged gc`, beside the live daemon) with a quota that needs the space."""
    run = storaged("gc", "--data-dir", str(d.data_dir), "--quota", str(quota), *tier_args(swift, bucket))
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_evicted_object_reads_through_with_range_and_is_fetched_back(daemon, swift, bucket, video_10s) -> None:
    # No periodic walk (only uploads are queued): a record removed below stays removed.
    d = daemon(*tier_args(swift, bucket), "--tier-scan-interval", "1h", "--janitor-interval", "0", env=TIER_ENV)
    data = video_10s.read_bytes()
    oid = upload(d, data, "ten.mp4")
    keep = upload(d, os.urandom(2000), "not-yet.bin")
    wait_until_sync(lambda: remote_json(d, oid) and remote_json(d, keep) and tier_status(d)["backlog"] == 0,
                    timeout=60, what="verified remote")
    (d.data_dir / keep[:2] / keep[2:] / "remote.json").unlink()  # as if not yet verified

    out = evict_all(d, swift, bucket, quota=len(data) // 2)
    assert f"deleted remote_copies {oid[:2]}/{oid[2:]}" in out
    assert not object_bytes(d.data_dir, oid).exists()
    od = d.data_dir / oid[:2] / oid[2:]
    assert (od / "meta.json").exists() and (od / "remote.json").exists()
    assert object_bytes(d.data_dir, keep).exists(), "an object not verified remote is never evicted"

    status, headers, body = http("GET", f"{d.url}/download/{oid}")
    assert status == 200 and body == data
    assert headers["ETag"] == f'"{oid}"'
    status, headers, body = http("GET", f"{d.url}/download/{oid}/ten.mp4", headers={"Range": "bytes=100-1123"})
    assert status == 206 and body == data[100:1124]
    assert headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
    name = object_bytes(d.data_dir, oid).name
    status, _h, body = http("GET", f"{d.url}/data/{oid[:2]}/{oid[2:]}/{name}", headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    try:
        http("GET", f"{d.url}/download/{oid}", headers={"Range": f"bytes={len(data) + 10}-"})
        raise AssertionError("a range past the end must be refused")
    except urllib.error.HTTPError as err:
        assert err.code == 416
        assert err.headers["Content-Range"] == f"bytes */{len(data)}"

    # fsck: an evicted object is fine; --remote checks the bucket's copies (one re-hashed).
    run = storaged("fsck", "--data-dir", str(d.data_dir), "--remote", "--remote-sample", "1",
                   *tier_args(swift, bucket))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 remote copies checked, 1 re-hashed, 0 problem(s)" in run.stdout

    # An analysis of an evicted object fetches its bytes back first.
    _s, _h, body = http("POST", f"{d.url}/analyse", json.dumps({"file_id": oid, "analysis": "probe"}).encode(),
                        {"Content-Type": "application/json"})
    aid = json.loads(body)["analysis_id"]
    assert hashlib.sha256(object_bytes(d.data_dir, oid).read_bytes()).hexdigest() == oid

    def probed():
        status, _h, body = http("GET", f"{d.url}/results/{oid}/{aid}")
        return status == 200 and json.loads(body)

    result = wait_until_sync(probed, timeout=60, what="probe done")
    assert result["result"]["duration"] > 9


def test_remote_copy_fsck_finds_a_damaged_bucket_copy(daemon, swift, bucket) -> None:
    d = daemon(*tier_args(swift, bucket), env=TIER_ENV)
    oid = upload(d, os.urandom(5000), "x.bin")
    wait_until_sync(lambda: remote_json(d, oid) is not None, timeout=60, what="verified remote")
    swift.client().put_object(Bucket=bucket, Key=f"{oid[:2]}/{oid[2:]}/the_file", Body=b"rot",
                              Metadata={"sha256": oid})
    run = storaged("fsck", "--data-dir", str(d.data_dir), "--remote", *tier_args(swift, bucket))
    assert run.returncode == 1
    assert f"remote copy {oid[:2]}/{oid[2:]}/the_file: size 3, recorded 5000" in run.stdout


def test_presigned_redirect(daemon, swift, bucket) -> None:
    d = daemon(*tier_args(swift, bucket, "--tier-redirect"), "--janitor-interval", "0", env=TIER_ENV)
    data = os.urandom(300_000)
    oid = upload(d, data, "r.bin")
    wait_until_sync(lambda: remote_json(d, oid) is not None, timeout=60, what="verified remote")
    evict_all(d, swift, bucket, quota=len(data) // 2)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(f"{d.url}/download/{oid}", timeout=30)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as err:
        assert err.code == 307
        location = err.headers["Location"]
    assert location.startswith(swift.endpoint + "/")
    with urllib.request.urlopen(location, timeout=30) as resp:  # a plain client, no credentials
        assert resp.read() == data


def test_two_daemons_on_one_bucket_dedupe_and_never_overwrite(daemon, swift, bucket, tmp_path) -> None:
    a = daemon(*tier_args(swift, bucket, box="box-a"), data_dir=tmp_path / "a", env=TIER_ENV)
    b = daemon(*tier_args(swift, bucket, box="box-b"), data_dir=tmp_path / "b", env=TIER_ENV)
    shared = os.urandom(3 * 1024 * 1024)
    sid = upload(a, shared, "from-a.mp4")
    wait_until_sync(lambda: remote_json(a, sid) is not None, timeout=60, what="a's copy verified")
    assert upload(b, shared, "from-b.mp4") == sid
    own_b = upload(b, os.urandom(1000), "only-b.bin")
    wait_until_sync(lambda: remote_json(b, sid) is not None and remote_json(b, own_b) is not None, timeout=60,
                    what="b's copies verified")
    sb = wait_drained(b)
    assert sb["deduplicated"] >= 1
    assert sb["sent"] < len(shared), "b never sent the bytes the bucket already held"
    assert remote_json(b, sid)["files"][f"{sid[:2]}/{sid[2:]}/the_file"]["deduplicated"] is True
    s3 = swift.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{sid[:2]}/{sid[2:]}/the_file" in keys
    meta = {box: json.loads(s3.get_object(Bucket=bucket, Key=f"boxes/{box}/{sid[:2]}/{sid[2:]}/meta.json")
                            ["Body"].read()) for box in ("box-a", "box-b")}
    assert (meta["box-a"]["name"], meta["box-b"]["name"]) == ("from-a.mp4", "from-b.mp4")

    # A content-addressed key that holds other bytes is never overwritten.
    planted = os.urandom(100)
    victim = hashlib.sha256(b"bytes nobody has uploaded yet").hexdigest()
    s3.put_object(Bucket=bucket, Key=f"{victim[:2]}/{victim[2:]}/the_file", Body=planted)
    assert upload(a, b"bytes nobody has uploaded yet", "v.txt") == victim
    wait_until_sync(lambda: "never overwritten" in (tier_status(a)["last_error"] or ""), timeout=30,
                    what="the refusal")
    assert s3.get_object(Bucket=bucket, Key=f"{victim[:2]}/{victim[2:]}/the_file")["Body"].read() == planted
    assert remote_json(a, victim) is None


def test_restore_from_remote_after_the_tree_is_lost(daemon, swift, bucket, tmp_path) -> None:
    d = daemon(*tier_args(swift, bucket, box="lost-box"), env=TIER_ENV)
    data = os.urandom(700_000)
    oid = upload(d, data, "evidence.mp4")
    body = json.dumps({"video_url": f"/download/{oid}/evidence.mp4"}).encode()
    http("POST", f"{d.url}/sessions", body, {"Content-Type": "application/json"})
    http("POST", f"{d.url}/sessions/1/races", json.dumps({"start_time": 1.5, "duration": 3}).encode(),
         {"Content-Type": "application/json"})
    session = json.loads(http("GET", f"{d.url}/sessions/1")[2])
    _s, _h, body = http("POST", f"{d.url}/analyse",
                        json.dumps({"file_id": oid, "analysis": "dummy", "args": {"seconds": 0}}).encode(),
                        {"Content-Type": "application/json"})
    aid = json.loads(body)["analysis_id"]
    wait_until_sync(lambda: http("GET", f"{d.url}/results/{oid}/{aid}")[0] == 200, timeout=60, what="dummy done")
    results = json.loads(http("GET", f"{d.url}/results/{oid}/{aid}")[2])
    wait_until_sync(lambda: remote_json(d, oid) is not None
                    and (d.data_dir / "tier" / "remote" / oid[:2] / oid[2:] / "analysis" / aid
                         / "results.json.json").exists()
                    and (d.data_dir / "tier" / "remote" / "races" / "1.json.json").exists()
                    and (d.data_dir / "tier" / "remote" / "sessions" / "1.json.json").exists()
                    and tier_status(d)["backlog"] == 0, timeout=60, what="objects and records replicated")
    meta = json.loads(http("GET", f"{d.url}/upload/{oid}")[2])
    d.stop()
    shutil.rmtree(d.data_dir)

    run = storaged("restore", "--from-remote", "--data-dir", str(d.data_dir),
                   *tier_args(swift, bucket, box="lost-box"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 object(s), bytes left in the bucket" in run.stdout
    again = daemon(*tier_args(swift, bucket, box="lost-box"), data_dir=d.data_dir, env=TIER_ENV)
    assert json.loads(http("GET", f"{again.url}/upload/{oid}")[2]) == meta
    assert json.loads(http("GET", f"{again.url}/sessions/1")[2]) == session
    assert json.loads(http("GET", f"{again.url}/races/1")[2])["start_time"] == 1.5
    assert json.loads(http("GET", f"{again.url}/results/{oid}/{aid}")[2]) == results
    status, _h, got = http("GET", f"{again.url}/download/{oid}", headers={"Range": "bytes=10-19"})
    assert status == 206 and got == data[10:20]
    run = storaged("fsck", "--data-dir", str(d.data_dir))
    assert run.returncode == 0, run.stdout + run.stderr


def test_splitting_a_session_whose_video_was_evicted_fetches_it_back(daemon, swift, bucket, video_10s) -> None:
    d = daemon(*tier_args(swift, bucket), "--janitor-interval", "0", env=TIER_ENV)
    data = video_10s.read_bytes()
    oid = upload(d, data, "session.mp4")
    wait_until_sync(lambda: remote_json(d, oid) is not None, timeout=60, what="verified remote")
    evict_all(d, swift, bucket, quota=len(data) // 2)
    assert not object_bytes(d.data_dir, oid).exists()
    json_h = {"Content-Type": "application/json"}
    http("POST", f"{d.url}/sessions", json.dumps({"video_url": f"/download/{oid}/session.mp4"}).encode(), json_h)
    http("POST", f"{d.url}/sessions/1/races", json.dumps({"start_time": 2, "duration": 3}).encode(), json_h)
    status, _h, _b = http("POST", f"{d.url}/sessions/1/split_races", b"", json_h)
    assert status == 202
    assert hashlib.sha256(object_bytes(d.data_dir, oid).read_bytes()).hexdigest() == oid

    def split_done():
        return json.loads(http("GET", f"{d.url}/sessions/1/split_races")[2])["status"] == "done"

    wait_until_sync(split_done, timeout=120, what="split done")
    race = json.loads(http("GET", f"{d.url}/races/1")[2])
    assert race["video_url"].startswith("/download/")
