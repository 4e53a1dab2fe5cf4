"""Replication of uploads to a real Swift (S3 API): verified, recorded, deduplicated, resumed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import requests  # noqa: F401  (pulled in by swift; the daemon is driven with urllib below)

from tests.helpers import wait_until_sync
from tests.swift_engine import SwiftEngine
from tests.tier.conftest import TIER_ENV, new_bucket, tier_args


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, dict(resp.headers), resp.read()


def upload(daemon, data: bytes, name: str) -> str:
    _status, _h, body = http("POST", f"{daemon.url}/upload?name={name}", data)
    return json.loads(body)["file_id"]


def tier_status(daemon) -> dict:
    return json.loads(http("GET", f"{daemon.url}/tier")[2])


def metrics(daemon) -> str:
    return http("GET", f"{daemon.url}/metrics")[2].decode()


def remote_json(daemon, oid: str) -> dict | None:
    path = daemon.data_dir / oid[:2] / oid[2:] / "remote.json"
    return json.loads(path.read_text()) if path.exists() else None


def wait_drained(daemon, timeout: float = 60) -> dict:
    wait_until_sync(lambda: tier_status(daemon)["backlog"] == 0, timeout=timeout, what="tier backlog drained")
    return tier_status(daemon)


def test_upload_is_replicated_verified_and_recorded(daemon, swift: SwiftEngine, bucket: str) -> None:
    d = daemon(*tier_args(swift, bucket, "--tier-part-size", "5M"), env=TIER_ENV)
    small = os.urandom(100_000)
    big = os.urandom(12 * 1024 * 1024 + 17)  # 3 parts of 5 MiB
    small_id, big_id = upload(d, small, "small.bin"), upload(d, big, "big.mp4")
    for oid in (small_id, big_id):
        wait_until_sync(lambda: remote_json(d, oid) is not None, timeout=60, what=f"remote.json of {oid[:8]}")
    s3 = swift.client()
    for oid, data in ((small_id, small), (big_id, big)):
        record = remote_json(d, oid)
        key = f"{oid[:2]}/{oid[2:]}/the_file"
        assert record["files"][key]["key"] == key
        assert record["files"][key]["sha256"] == oid
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(data)
        assert head["Metadata"]["sha256"] == oid
        assert head["ETag"].strip('"') == record["files"][key]["etag"]
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        meta = json.loads(s3.get_object(Bucket=bucket, Key=f"boxes/box-a/{oid[:2]}/{oid[2:]}/meta.json")["Body"].read())
        assert meta["file_id"] == oid
    # The big one went up in parts: its ETag is the engine's multipart ETag.
    assert remote_json(d, big_id)["files"][f"{big_id[:2]}/{big_id[2:]}/the_file"]["etag"].endswith("-3")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    status = wait_drained(d)
    assert status["files"] == 4 and status["failures"] == 0
    text = metrics(d)
    assert "storaged_tier_backlog_items 0.0" in text
    assert "storaged_tier_items_total 2.0" in text


def test_objects_stored_before_the_tier_are_found_by_the_walk(daemon, swift, bucket, tmp_path) -> None:
    d = daemon()
    oid = upload(d, b"stored before the tier was configured", "early.txt")
    d.stop()
    d2 = daemon(*tier_args(swift, bucket), data_dir=d.data_dir, env=TIER_ENV)
    wait_until_sync(lambda: remote_json(d2, oid) is not None, timeout=60, what="remote.json after the walk")
    assert swift.client().head_object(Bucket=bucket, Key=f"{oid[:2]}/{oid[2:]}/the_file")["ContentLength"] == 37


def test_wrong_credentials_are_a_clear_error_not_a_crash(daemon, swift, bucket) -> None:
    d = daemon(*tier_args(swift, bucket), env={"AWS_ACCESS_KEY_ID": "test:tester", "AWS_SECRET_ACCESS_KEY": "nope"})
    oid = upload(d, b"kept until the credentials are fixed", "x.txt")
    wait_until_sync(lambda: tier_status(d)["last_error"], timeout=30, what="a tier error")
    status = tier_status(d)
    assert "refused our credentials" in status["last_error"]
    assert status["backlog"] == 1
    text = metrics(d)
    assert 'storaged_tier_last_error{error="the engine refused our credentials' in text
    assert "storaged_tier_backlog_items 1.0" in text
    wait_until_sync(lambda: "refused our credentials" in d.log_path.read_text(), timeout=10, what="log line")
    # Still serving, nothing lost: the object and its outbox entry are there.
    assert http("GET", f"{d.url}/healthz")[0] == 200
    assert (d.data_dir / "tier" / "outbox" / f"objects-{oid}.json").exists()
    assert remote_json(d, oid) is None
    # Fixed credentials (a restart with the right secret): the backlog drains.
    d.stop()
    d2 = daemon(*tier_args(swift, bucket), data_dir=d.data_dir, env=TIER_ENV)
    wait_drained(d2)
    assert remote_json(d2, oid) is not None


def test_engine_killed_mid_upload_then_restarted_loses_nothing(daemon, own_swift: SwiftEngine) -> None:
    bucket = new_bucket(own_swift)
    # 1 MiB/s: the uploads are still going when the engine dies.
    d = daemon(*tier_args(own_swift, bucket, "--tier-bandwidth", "1M", "--tier-part-size", "5M",
                          "--tier-retry-max-backoff", "2s"), env=TIER_ENV)
    blobs = {}
    for i in range(4):
        data = os.urandom(1024 * 1024 * (1 + i))
        blobs[upload(d, data, f"f{i}.bin")] = data
    wait_until_sync(lambda: tier_status(d)["bytes"] > 0 or tier_status(d)["uploading"] > 0, timeout=30,
                    what="uploads under way")
    own_swift.kill()
    wait_until_sync(lambda: tier_status(d)["failures"] > 0, timeout=60, what="a failure while the engine is down")
    assert tier_status(d)["backlog"] > 0
    own_swift.start()
    wait_drained(d, timeout=120)
    s3 = own_swift.client()
    for oid, data in blobs.items():
        assert remote_json(d, oid) is not None
        assert s3.get_object(Bucket=bucket, Key=f"{oid[:2]}/{oid[2:]}/the_file")["Body"].read() == data


def test_daemon_sigkilled_mid_multipart_resumes_and_completes(daemon, swift, bucket) -> None:
    args = tier_args(swift, bucket, "--tier-bandwidth", "4M", "--tier-part-size", "5M")
    d = daemon(*args, env=TIER_ENV)
    data = os.urandom(40 * 1024 * 1024)
    oid = upload(d, data, "long.ts")
    entry_path = d.data_dir / "tier" / "outbox" / f"objects-{oid}.json"

    def parts_recorded() -> int:
        try:
            mp = json.loads(entry_path.read_text()).get("multipart") or {}
        except (FileNotFoundError, ValueError):
            return 0
        return sum(len(m["parts"]) for m in mp.values())

    wait_until_sync(lambda: parts_recorded() >= 2, timeout=60, what="two parts sent")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    recorded = json.loads(entry_path.read_text())["multipart"]
    (upload_id,) = [m["upload_id"] for m in recorded.values()]
    assert [u["UploadId"] for u in swift.client().list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload_id]
    d2 = daemon(*args, data_dir=d.data_dir, env=TIER_ENV)
    wait_until_sync(lambda: remote_json(d2, oid) is not None, timeout=120, what="completed after the restart")
    status = tier_status(d2)
    assert status["resumed"] == 1
    # It carried on: the parts sent before the kill were not sent again.
    assert status["bytes"] >= len(data)
    assert status["sent"] <= len(data) - 2 * 5 * 1024 * 1024 + 4096
    s3 = swift.client()
    body = s3.get_object(Bucket=bucket, Key=f"{oid[:2]}/{oid[2:]}/the_file")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == oid
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not entry_path.exists()


def test_landing_page_shows_the_tier(daemon, swift, bucket) -> None:
    d = daemon(*tier_args(swift, bucket), env={"AWS_ACCESS_KEY_ID": "test:tester", "AWS_SECRET_ACCESS_KEY": "nope"})
    upload(d, b"waiting for good credentials", "w.txt")
    wait_until_sync(lambda: tier_status(d)["last_error"], timeout=30, what="a tier error")
    html = http("GET", f"{d.url}/")[2].decode()
    assert "<h2>Storage tier</h2>" in html
    assert f"bucket {bucket}, box box-a" in html
    assert "1 item(s)" in html
    assert "the engine refused our credentials" in html


def test_multipart_the_engine_lost_is_begun_again_after_a_sigkill(daemon, swift, bucket) -> None:
    args = tier_args(swift, bucket, "--tier-bandwidth", "4M", "--tier-part-size", "5M")
    d = daemon(*args, env=TIER_ENV)
    data = os.urandom(24 * 1024 * 1024)
    oid = upload(d, data, "lost-upload.ts")
    entry_path = d.data_dir / "tier" / "outbox" / f"objects-{oid}.json"

    def recorded_upload():
        try:
            mp = json.loads(entry_path.read_text()).get("multipart") or {}
        except (FileNotFoundError, ValueError):
            return None
        return next((m["upload_id"] for m in mp.values() if m["parts"]), None)

    upload_id = wait_until_sync(recorded_upload, timeout=60, what="a part sent")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    key = f"{oid[:2]}/{oid[2:]}/the_file"
    s3 = swift.client()
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)  # the engine loses it
    d2 = daemon(*args, data_dir=d.data_dir, env=TIER_ENV)
    wait_until_sync(lambda: remote_json(d2, oid) is not None, timeout=120, what="uploaded again")
    assert tier_status(d2)["sent"] >= len(data), "every part was sent again"
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest() == oid
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "lost the upload" in d2.log_path.read_text()
