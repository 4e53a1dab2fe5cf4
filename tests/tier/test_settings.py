"""Tier settings: credentials only from a file nobody else can read, or the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storaged.config import Config, ConfigError
from storaged.tier import settings


def test_off_without_a_bucket(tmp_path: Path) -> None:
    assert not settings.enabled(Config(data_dir=tmp_path))


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    creds.chmod(0o644)
    config = Config(data_dir=tmp_path, tier_bucket="b", tier_credentials_file=str(creds))
    with pytest.raises(ConfigError, match="readable by others"):
        settings.load(config, env={})
    creds.chmod(0o600)
    loaded = settings.load(config, env={})
    assert (loaded.access_key, loaded.secret_key) == ("AK", "SK")


def test_credentials_from_the_environment_and_keys(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, tier_bucket="b", tier_prefix="fleet", tier_box="box-7")
    with pytest.raises(ConfigError, match="no credentials"):
        settings.load(config, env={})
    s = settings.load(config, env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"})
    assert s.shared_key("ab/cd/the_file") == "fleet/ab/cd/the_file"
    assert s.box_key("sessions/1.json") == "fleet/boxes/box-7/sessions/1.json"
    assert s.verify_tls is True


def test_daemon_refuses_to_start_with_an_unsafe_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("aws_access_key_id = AK\naws_secret_access_key = SK\n")
    creds.chmod(0o640)
    run = subprocess.run([sys.executable, "-m", "storaged", "serve", "--data-dir", str(tmp_path / "data"),
                          "--port", "0", "--tier-bucket", "b", "--tier-credentials-file", str(creds)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "AWS_ACCESS_KEY_ID": ""})
    assert run.returncode == 2
    assert run.stderr.startswith("storaged: ") and "tier_credentials_file" in run.stderr
    assert "readable by others (mode 640); chmod 600 it" in run.stderr


def test_bandwidth_throttle_holds_the_rate_across_threads() -> None:
    import threading
    import time

    from storaged.tier.client import Throttle

    throttle = Throttle(1024 * 1024)  # 1 MiB/s, with a burst of one second's worth
    began = time.monotonic()
    threads = [threading.Thread(target=throttle.take, args=(1024 * 1024,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 3 MiB at 1 MiB/s, the first one from the burst: at least 2 s, whichever thread sent what.
    assert time.monotonic() - began >= 1.9
    assert Throttle(0).take(10**12) is None  # 0: no limit, no wait


async def test_without_a_bucket_the_tier_is_off_and_says_so(client) -> None:
    resp = await client.get("/tier")
    assert resp.status == 200 and await resp.json() == {"enabled": False}
    text = await (await client.get("/metrics")).text()
    assert "storaged_tier_enabled 0.0" in text
    assert "storaged_tier_backlog_items 0.0" in text
    page = await (await client.get("/")).text()
    assert "Storage tier" not in page
