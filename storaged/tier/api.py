"""The tier in the daemon: wiring, /tier status, its /metrics figures."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from storaged.web import openapi
from storaged.api.keys import AFTER_PUT, CONFIG, LAYOUT
from storaged.ops.api import METRICS
from storaged.tier import settings as tier_settings
from storaged.tier.service import Tier

log = logging.getLogger("storaged.tier")

TIER = web.AppKey("tier", Tier)
routes = web.RouteTableDef()


def setup(app: web.Application) -> None:
    """Add the tier when ``tier_bucket`` is set (settings errors fail the start, with their reason)."""
    config = app[CONFIG]
    app.add_routes(routes)
    app[METRICS].registry.register(_TierCollector(app))
    openapi.describe("GET /tier", responses={"200": "`{\"enabled\", \"backlog\", \"backlog_bytes\", \"oldest_age\", "
                                             "\"last_error\", …}`"})
    if not tier_settings.enabled(config):
        return
    tier = Tier(app[LAYOUT], tier_settings.load(config))
    app[TIER] = tier
    app[AFTER_PUT].append(lambda meta: tier.enqueue("objects", meta["file_id"]))
    app.cleanup_ctx.append(_tier_ctx)


async def _tier_ctx(app: web.Application) -> AsyncIterator[None]:
    tier = app[TIER]
    await tier.start()
    log.info("storage tier: replicating to bucket %s%s as box %s", tier.settings.bucket,
             f" at {tier.settings.endpoint}" if tier.settings.endpoint else "", tier.settings.box)
    yield
    await tier.close()


@routes.get("/tier")
async def tier_status(request: web.Request) -> web.Response:
    """The storage tier: backlog (items, bytes, oldest age), last error, counters."""
    tier = request.app.get(TIER)
    return web.json_response(tier.status() if tier is not None else {"enabled": False})


class _TierCollector:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def describe(self):
        return []

    def collect(self):
        tier = self.app.get(TIER)
        s = tier.status() if tier is not None else {}
        yield GaugeMetricFamily("storaged_tier_enabled", "1 when a storage tier bucket is configured.",
                                value=1 if tier is not None else 0)
        yield GaugeMetricFamily("storaged_tier_backlog_items", "Items in the tier's outbox (not yet verified remote).",
                                value=s.get("backlog", 0))
        yield GaugeMetricFamily("storaged_tier_backlog_bytes", "Bytes of the items in the tier's outbox.",
                                value=s.get("backlog_bytes", 0))
        yield GaugeMetricFamily("storaged_tier_backlog_oldest_age_seconds", "Age of the oldest outbox entry.",
                                value=s.get("oldest_age", 0))
        yield GaugeMetricFamily("storaged_tier_uploads_active", "Items being sent right now.",
                                value=s.get("uploading", 0))
        err = GaugeMetricFamily("storaged_tier_last_error", "The last replication error (as a label; 1 while one "
                                "is known).", labels=["error"])
        if s.get("last_error"):
            err.add_metric([s["last_error"][:300]], 1)
        yield err
        yield GaugeMetricFamily("storaged_tier_last_error_timestamp_seconds", "When the last replication error "
                                "happened (0: none).", value=s.get("last_error_at") or 0)
        for name, what in (("items", "Items replicated and verified."),
                           ("files", "Files sent and verified."),
                           ("bytes", "Bytes of the files verified remote."),
                           ("sent", "Bytes sent to the engine (parts resumed after a restart are not sent again)."),
                           ("deduplicated", "Files the bucket already held (nothing sent)."),
                           ("failures", "Failed attempts (each is retried with backoff)."),
                           ("resumed", "Multipart uploads resumed after a restart.")):
            c = CounterMetricFamily(f"storaged_tier_{name}", what)
            c.add_metric([], s.get(name, 0))
            yield c
