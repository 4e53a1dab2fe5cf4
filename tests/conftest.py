from __future__ import annotations

from pathlib import Path

import pytest

from storaged.app import create_app
from storaged.config import Config
from tests.helpers import Daemon, make_video


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, access_log=False)


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))


@pytest.fixture
def make_client(aiohttp_client, config):
    """Build a client for an app with some settings changed."""

    async def make(**changes):
        return await aiohttp_client(create_app(config.replace(**changes)))

    return make


@pytest.fixture
def daemon(tmp_path: Path):
    started: list[Daemon] = []

    def start(*extra: str, data_dir: Path | None = None, env: dict | None = None) -> Daemon:
        d = Daemon(data_dir or tmp_path / "data", *extra, env=env)
        d.data_dir.mkdir(exist_ok=True)
        started.append(d.start())
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_10s(media_dir: Path) -> Path:
    """10 s, 25 fps, keyframe every second, 160x120 H.264 + AAC."""
    return make_video(media_dir / "ten.mp4", seconds=10)
