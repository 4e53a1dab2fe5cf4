"""Contract sessions: each test file plays an existing client's session against a real daemon
(``storaged serve`` as a subprocess on loopback), exactly as its contract in ``specs/`` shows it."""

from __future__ import annotations

import aiohttp
import pytest


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
