"""A real OpenStack Swift (S3 API) for the storage tier's tests.

One engine serves the whole test session (each test gets its own bucket);
tests that kill the engine start their own.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.swift_engine import ACCESS_KEY, REGION, SECRET_KEY, SwiftEngine

_buckets = itertools.count(1)


@pytest.fixture(scope="session")
def swift(tmp_path_factory) -> SwiftEngine:
    engine = SwiftEngine(tmp_path_factory.mktemp("swift")).start()
    yield engine
    engine.stop()


@pytest.fixture
def own_swift(tmp_path: Path) -> SwiftEngine:
    """An engine of this test alone (it may be killed and restarted)."""
    engine = SwiftEngine(tmp_path / "swift").start()
    yield engine
    engine.stop()


def new_bucket(engine: SwiftEngine) -> str:
    name = f"tier-test-{next(_buckets)}"
    engine.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(swift: SwiftEngine) -> str:
    return new_bucket(swift)


def tier_args(engine: SwiftEngine, bucket: str, *extra: str, box: str = "box-a") -> list[str]:
    return ["--tier-bucket", bucket, "--tier-endpoint", engine.endpoint, "--tier-region", REGION,
            "--tier-box", box, "--tier-scan-interval", "1s", *extra]


TIER_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
