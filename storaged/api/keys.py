"""Typed application keys for the shared services, and the dependencies every family's setup gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from storaged.api.connections import ConnectionGuard
from storaged.api.middleware import AuthThrottle, Front, InFlight
from storaged.config import Config
from storaged.jobs.runner import JobRunner
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore

if TYPE_CHECKING:
    from storaged.provider import Provider
    from storaged.videostreams.service import VideostreamCatalogue

CONFIG = web.AppKey("config", Config)
LAYOUT = web.AppKey("layout", Layout)
OBJECTS = web.AppKey("objects", ObjectStore)
JOBS = web.AppKey("jobs", JobRunner)
INFLIGHT = web.AppKey("inflight", InFlight)
AUTH = web.AppKey("auth", AuthThrottle)
# The token check (None without a token): a refusal response or None. Expect handlers run before
# middlewares, so upload routes call it themselves to refuse before the body.
TOKEN_GATE = web.AppKey("token_gate", object)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)

# Coroutine functions ``hook(file_id)`` run before an object is deleted (the
# job engine cancels the object's analyses there).  Families append theirs.
BEFORE_DELETE = web.AppKey("before_delete", list)

# Coroutine functions ``hook(meta)`` run after an upload stored an object (the
# storage tier queues it).  Families append theirs.
AFTER_PUT = web.AppKey("after_put", list)

# Coroutine functions ``hook(request, file_id, meta, headers)`` asked, in order,
# to answer for an object whose bytes are not on the disk (the storage tier
# streams them from its bucket); each answers a response or None.
READ_THROUGH = web.AppKey("read_through", list)

# Coroutine functions ``hook(file_id, meta)`` run, holding the object's lock,
# before work reads an object's bytes (the storage tier fetches evicted bytes back).
ENSURE_LOCAL = web.AppKey("ensure_local", list)
# Sources of marks on a stream's timeline page: ``await source(start, end)`` (epoch seconds) answers
# ``[(time, label, href), ...]``.  The camera family adds its motion images; playback draws them.
TIMELINE_MARKS = web.AppKey("timeline_marks", list)

@dataclass
class Deps:
    """What ``setup(app, deps)`` of every family gets; create_app builds it once.

    Families register into it as they are set up, in create_app's order:
    each appends its provider to ``providers`` (ops, set up after the
    families, hands them to the janitor and /metrics), the analyses family
    appends to ``before_delete``, the storage tier to ``after_put``,
    ``read_through`` and ``ensure_local`` (each is also the app key of the
    same name in capitals), families and the tier to ``landing_sections``,
    and the videostreams family sets
    ``videostreams`` before the recording family, which registers its runs
    there, is set up.  The uploads family hooks the ``/files`` subtree into
    ``front`` (the one middleware) and ops adds its request observer there.
    """

    config: Config
    layout: Layout
    objects: ObjectStore
    jobs: JobRunner
    inflight: InFlight
    front: Front  # the one middleware: a family's subtree hook (tus), ops' request observer
    providers: list["Provider"] = field(default_factory=list)
    before_delete: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    after_put: list[Callable[[dict], Any]] = field(default_factory=list)
    read_through: list[Callable[..., Awaitable[Any]]] = field(default_factory=list)
    ensure_local: list[Callable[[str, dict], Awaitable[None]]] = field(default_factory=list)
    videostreams: "VideostreamCatalogue | None" = None
    timeline_marks: list[Callable[[float, float], Awaitable[list]]] = field(default_factory=list)
    collectors: list[Any] = field(default_factory=list)  # more Prometheus collectors for ops' /metrics
    # Sections of the landing page, ``(order, render)`` with ``await render(request)`` answering HTML
    # ("" leaves it out); families add theirs, storaged.web.landing (set up after them) renders them.
    landing_sections: list[tuple[int, Callable[[web.Request], Awaitable[str]]]] = field(default_factory=list)
