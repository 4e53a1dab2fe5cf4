"""GET /metrics: parses as Prometheus text, has the families, counts requests by route template."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from storaged.app import create_app
from storaged.config import Config
from tests.helpers import wait_until
from tests.ops_helpers import write_image, write_segment

FAMILIES = {
    "storaged_data_bytes", "storaged_data_files", "storaged_filesystem_free_bytes", "storaged_filesystem_size_bytes",
    "storaged_objects", "storaged_jobs", "storaged_job_queue_entries", "storaged_recordings_active",
    "storaged_motion_cameras_active", "storaged_ffmpeg_restarts", "storaged_http_requests",
    "storaged_http_request_duration_seconds", "storaged_janitor_passes", "storaged_janitor_deleted_files",
    "storaged_janitor_deleted_bytes",
}


async def scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(await resp.text())}


def value(families: dict, family: str, sample: str, **labels) -> float | None:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def test_scrape_parses_and_has_every_family(client):
    async def walked():
        f = await scrape(client)
        return f if value(f, "storaged_usage_walk_timestamp_seconds", "storaged_usage_walk_timestamp_seconds") else None

    families = await wait_until(walked, timeout=30, what="the first usage walk")
    assert FAMILIES <= set(families), FAMILIES - set(families)
    assert value(families, "storaged_filesystem_free_bytes", "storaged_filesystem_free_bytes") > 0
    kinds = {s.labels["kind"] for s in families["storaged_data_bytes"].samples}
    assert {"recordings", "motion_images", "exports", "clips", "analyses", "uploads"} <= kinds
    states = {s.labels["state"] for s in families["storaged_jobs"].samples}
    assert {"queued", "running", "done", "failed", "cancelled"} <= states


async def test_request_counter_increments_by_route_template(client):
    for oid in ("1" * 64, "2" * 64, "3" * 64):
        assert (await client.get(f"/upload/{oid}")).status == 404
    families = await scrape(client)
    assert value(families, "storaged_http_requests", "storaged_http_requests_total",
                 method="GET", route="/upload/{file_id}", status="404") == 3
    routes = {s.labels["route"] for s in families["storaged_http_requests"].samples}
    assert not any("111" in r for r in routes)  # never the raw path
    assert value(families, "storaged_http_request_duration_seconds", "storaged_http_request_duration_seconds_count",
                 method="GET", route="/upload/{file_id}") == 3
    before = value(families, "storaged_http_requests", "storaged_http_requests_total",
                   method="GET", route="/upload/{file_id}", status="404")
    await client.get(f"/upload/{'4' * 64}")
    after = await scrape(client)
    assert value(after, "storaged_http_requests", "storaged_http_requests_total",
                 method="GET", route="/upload/{file_id}", status="404") == before + 1


async def test_bytes_per_kind_come_from_the_cached_walk(aiohttp_client, data_dir):
    for i in range(3):
        write_segment(data_dir, 1, 1, i, 1000, time.time() - 600 + i)
    write_image(data_dir, 1, time.time() - 60, size=500)
    client = await aiohttp_client(create_app(Config(data_dir=data_dir, access_log=False, metrics_interval=1.0)))

    async def walked():
        families = await scrape(client)
        return families if value(families, "storaged_data_bytes", "storaged_data_bytes",
                                 kind="recordings") == 3000 else None

    families = await wait_until(walked, timeout=30, what="the usage walk")
    assert value(families, "storaged_data_files", "storaged_data_files", kind="recordings") == 3
    assert value(families, "storaged_data_bytes", "storaged_data_bytes", kind="motion_images") == 504
    resp = await client.post("/upload", params={"name": "a.bin"}, data=b"x" * 777)
    assert resp.status == 200

    async def counted():
        f = await scrape(client)
        return value(f, "storaged_objects", "storaged_objects") == 1 and f

    families = await wait_until(counted, timeout=30, what="the next walk to count the upload")
    assert value(families, "storaged_data_files", "storaged_data_files", kind="uploads") == 3  # bytes, meta, link


async def test_each_app_has_its_own_registry(aiohttp_client, data_dir, tmp_path):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    a = await aiohttp_client(create_app(Config(data_dir=data_dir, access_log=False)))
    b = await aiohttp_client(create_app(Config(data_dir=other_dir, access_log=False)))
    await a.get("/healthz")
    await a.get("/healthz")
    fa, fb = await asyncio.gather(scrape(a), scrape(b))
    assert value(fa, "storaged_http_requests", "storaged_http_requests_total", route="/healthz") == 2
    assert value(fb, "storaged_http_requests", "storaged_http_requests_total", route="/healthz") is None


def test_request_tally_renders_what_prometheus_client_would():
    """The hot-path tally (plain dicts) gives the same samples as prometheus_client's Counter and
    Histogram fed the same requests: cumulative buckets, a value on a bound counted in that bucket."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from storaged.ops.metrics import LATENCY_BUCKETS, Metrics

    ours = Metrics()
    registry = CollectorRegistry()
    counter = Counter("storaged_http_requests", "x", ["method", "route", "status"], registry=registry)
    histogram = Histogram("storaged_http_request_duration_seconds", "x", ["method", "route"],
                          buckets=LATENCY_BUCKETS, registry=registry)
    requests = [("GET", "/a", 200, 0.0004), ("GET", "/a", 200, 0.005), ("GET", "/a", 404, 0.005),
                ("POST", "/b", 507, 31.0), ("BREW", "/a", 200, 0.0025), ("GET", "/a", 200, 2.0)]
    for method, route, status, seconds in requests:
        ours.observe(method, route, status, seconds)
        label = method if method != "BREW" else "other"
        counter.labels(label, route, str(status)).inc()
        histogram.labels(label, route).observe(seconds)

    def samples(text: bytes) -> set:
        return {(s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
                for f in text_string_to_metric_families(text.decode()) for s in f.samples
                if f.name in ("storaged_http_requests", "storaged_http_request_duration_seconds")
                and not s.name.endswith("_created")}

    expected = samples(generate_latest(registry))
    assert len(expected) == 4 + 3 * (len(LATENCY_BUCKETS) + 3)  # 4 counters; 3 histograms: buckets, +Inf, count, sum
    assert samples(ours.render()) == expected
