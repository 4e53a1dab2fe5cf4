"""Typed application keys for the shared services."""

from __future__ import annotations

from aiohttp import web

from storaged.api.connections import ConnectionGuard
from storaged.api.middleware import AuthThrottle, InFlight
from storaged.config import Config
from storaged.jobs.runner import JobRunner
from storaged.store.layout import Layout
from storaged.store.objects import ObjectStore

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
