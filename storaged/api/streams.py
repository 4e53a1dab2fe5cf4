"""Stream recording (/streams)."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add this family's routes and services to the app."""
