"""The data families, in the order create_app sets them up.

Each is a package ``storaged/<family>/`` that alone knows its paths and file
names: ``api.py`` (its routes, ``setup(app, deps)``, and ``PROVIDER``, the
class of its provider), ``provider.py`` (what retention, fsck, metrics and a
storage tier may ask of it, see storaged.provider) and its service modules.
The storage tier is not a family but answers beside them: its eviction
provider and ``check_remote`` (its copies, for ``fsck --remote``).
videostreams comes before recording, which registers live runs in its
catalogue; playback reads recording's streams, so it comes after.
"""

from __future__ import annotations

from storaged.analyses import api as analyses
from storaged.camera import api as camera
from storaged.config import Config
from storaged.files import api as files
from storaged.playback import api as playback
from storaged.provider import Provider
from storaged.recording import api as recording
from storaged.sessions import api as sessions
from storaged.store.layout import Layout
from storaged.tier.check import check_remote  # noqa: F401  (for the command line: fsck --remote)
from storaged.tier.evict import providers_for as tier_providers
from storaged.uploads import api as uploads
from storaged.videostreams import api as videostreams

FAMILIES = (files, analyses, sessions, videostreams, recording, playback, camera, uploads)


def providers(layout: Layout, config: Config) -> list[Provider]:
    """Every family's provider without running services, and the storage tier's eviction when it is
    configured (for the command line: gc, fsck)."""
    return [*(family.PROVIDER(layout, config) for family in FAMILIES), *tier_providers(layout, config)]
