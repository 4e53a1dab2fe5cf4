"""The playback family's answers: it serves recordings the recording family keeps and keeps nothing itself."""

from __future__ import annotations

from storaged.config import Config
from storaged.provider import Provider
from storaged.store.layout import Layout


class PlaybackProvider(Provider):
    name = "playback"

    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
