"""The tier in the daemon: wiring, /tier status, its /metrics figures."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import AsyncIterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from storaged.web import openapi
from storaged.web.page import esc, human_duration, human_size, table
from storaged.api.keys import LAYOUT, Deps
from storaged.errors import StoragedError
from storaged.tier import settings as tier_settings
from storaged.tier.client import TierError
from storaged.tier.evict import bytes_key, providers_for
from storaged.tier.sources import sources_from
from storaged.tier.service import Tier, evicted, fetch_back_blocking

log = logging.getLogger("storaged.tier")

TIER = web.AppKey("tier", Tier)
routes = web.RouteTableDef()


def setup(app: web.Application, deps: Deps) -> None:
    """Add the tier when ``tier_bucket`` is set (settings errors fail the start, with their reason)."""
    config = deps.config
    app.add_routes(routes)
    deps.collectors.append(_TierCollector(app))
    deps.providers.extend(providers_for(deps.layout, config))
    openapi.describe("GET /tier", responses={"200": openapi.answer(
        "the tier's state", openapi.obj(("enabled",), enabled={"type": "boolean"}, backlog={"type": "integer"},
                                        backlog_bytes={"type": "integer"}, oldest_age={"type": ["number", "null"]},
                                        last_error={"type": ["string", "null"]}))})
    if not tier_settings.enabled(config):
        return
    tier = Tier(deps.layout, tier_settings.load(config), sources=sources_from(deps.providers))
    app[TIER] = tier
    deps.after_put.append(lambda meta: on_put(tier, meta))
    deps.read_through.append(read_through)
    deps.ensure_local.append(lambda oid, meta: ensure_local(tier, oid, meta))
    app.cleanup_ctx.append(_tier_ctx)
    deps.landing_sections.append((60, tier_section))


async def on_put(tier: Tier, meta: dict) -> None:
    """A new object is queued at once (a dedupe of one already here is the walk's business)."""
    if not meta.get("deduplicated"):
        await tier.enqueue("objects", meta["file_id"])


async def _tier_ctx(app: web.Application) -> AsyncIterator[None]:
    tier = app[TIER]
    await tier.start()
    log.info("storage tier: replicating to bucket %s%s as box %s", tier.settings.bucket,
             f" at {tier.settings.endpoint}" if tier.settings.endpoint else "", tier.settings.box)
    yield
    await tier.close()


_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")


class TierUnavailable(StoragedError):
    status = 503


async def read_through(request: web.Request, oid: str, meta: dict, headers: dict) -> web.StreamResponse | None:
    """Serve an evicted object's bytes from the bucket (Range passed on), or redirect to a presigned URL.

    None when the object is not evicted (the caller answers as without a tier).
    """
    tier = request.app.get(TIER)
    if tier is None or not await asyncio.to_thread(evicted, request.app[LAYOUT], oid, meta):
        return None
    if any(tag.value in (oid, "*") for tag in request.if_none_match or ()):
        return web.Response(status=304, headers={**headers, "ETag": f'"{oid}"'})
    key = tier.settings.shared_key(bytes_key(oid))
    if tier.settings.redirect:
        url = await asyncio.to_thread(tier.s3.presign, key, 3600, ResponseContentType=meta["content_type"],
                                      ResponseContentDisposition=headers.get("Content-Disposition", "inline"))
        return web.Response(status=307, headers={"Location": url, "Cache-Control": "no-store"})
    wanted = (request.headers.get("Range") or "").strip()
    wanted = wanted if _RANGE.fullmatch(wanted) else None  # multi-range or malformed: the whole body
    try:
        answer, body = await asyncio.to_thread(tier.s3.get, key, wanted)
    except TierError as exc:
        if exc.status == 416 or exc.code == "InvalidRange":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{meta['size']}"})
        raise TierUnavailable(f"the file is in the storage tier, which cannot be read now: {exc}") from None
    response = web.StreamResponse(status=206 if answer.get("ContentRange") else 200,
                                  headers={**headers, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"})
    response.content_type = meta["content_type"]
    response.content_length = answer["ContentLength"]
    if answer.get("ContentRange"):
        response.headers["Content-Range"] = answer["ContentRange"]
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            while chunk := await asyncio.to_thread(body.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
    finally:
        await asyncio.to_thread(body.close)
    return response


async def ensure_local(tier: Tier, oid: str, meta: dict) -> None:
    """Fetch an evicted object back before work that reads it (the caller holds the object's lock)."""
    try:
        await asyncio.to_thread(fetch_back_blocking, tier, oid, meta)
    except TierError as exc:
        raise TierUnavailable(f"the file is in the storage tier, which cannot be read now: {exc}") from None


@routes.get("/tier")
async def tier_status(request: web.Request) -> web.Response:
    """The storage tier: backlog (items, bytes, oldest age), last error, counters."""
    tier = request.app.get(TIER)
    return web.json_response(tier.status() if tier is not None else {"enabled": False})


async def tier_section(request: web.Request) -> str:
    """The landing page's storage tier section: the outbox and the last error."""
    s = request.app[TIER].status()
    rows = [["backlog", f"{s['backlog']} item(s), {esc(human_size(s['backlog_bytes']))}"],
            ["oldest entry", esc(human_duration(s["oldest_age"])) if s["backlog"] else "—"],
            ["uploading now", str(s["uploading"])],
            ["verified remote since start", f"{s['items']} item(s), {esc(human_size(s['bytes']))} "
                                            f"({s['deduplicated']} file(s) already in the bucket)"],
            ["last error", esc(s["last_error"]) if s["last_error"] else "none"]]
    return (f"<h2>Storage tier</h2><p class=\"muted\">bucket {esc(s['bucket'])}, box {esc(s['box'])} — "
            f"<a href=\"/tier\">/tier</a></p>" + table(["", ""], rows))


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
