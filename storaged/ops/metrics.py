"""Prometheus metrics: a per-app registry, a cached usage walk, request counters.

Protocol
--------
Bytes and files per kind of data, objects and jobs by state come from a walk
of the tree that runs in a thread every ``metrics_interval`` and is cached;
a scrape only reads the cache (and one ``statvfs``), so scraping never walks
the tree.  Live figures (recordings, cameras, janitor counters) are read from
the services when the scrape happens.  Request counts and latencies are
plain tallies the event loop adds to (every request: no lock, no
prometheus_client value object on the hot path) and a scrape renders.  Each app has its own
``CollectorRegistry``, so many apps in one process never collide.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from storaged.config import Config
from storaged.jobs.queue import entries as queue_entries
from storaged.jobs.state import read_state
from storaged.provider import Provider, Sample, Scan
from storaged.store.layout import Layout
from storaged.store.tree import subdirs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}


@dataclass
class Usage:
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    jobs: Tally = field(default_factory=Tally)
    queue: int = 0
    samples: list[Sample] = field(default_factory=list)   # the families' own usage figures
    walked_at: float = 0.0
    duration: float = 0.0


def job_dirs(providers: Iterable[Provider]) -> Iterator[Path]:
    """Every job directory the families keep (each names its job roots)."""
    for provider in providers:
        for root in provider.job_roots():
            yield from subdirs(root)


def walk_usage(layout: Layout, config: Config, providers: Iterable[Provider]) -> Usage:
    """The figures a scrape shows.  Blocking: call in a thread."""
    providers = list(providers)
    began = time.monotonic()
    scan = Scan(layout, config, usage=True)
    out = Usage()
    for provider in providers:
        for kind in provider.kinds:
            size = files = 0
            for item in kind.items(scan):
                size += item.size
                files += item.files
            out.kinds[kind.name] = (size, files)
        out.samples.extend(provider.usage(scan))
    for jd in job_dirs(providers):
        state = read_state(jd)
        if state is not None:
            out.jobs[state.status] += 1
    out.queue = len(queue_entries(layout))
    out.walked_at = time.time()
    out.duration = time.monotonic() - began
    return out


class Metrics:
    def __init__(self, live: Callable[[], dict[str, Any]] = dict, providers: Iterable[Provider] = ()) -> None:
        self.providers = providers
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestTally()
        self.usage: Usage | None = None
        self.disk: tuple[int, int] | None = None
        self.live = live
        self.registry.register(self.requests)
        self.registry.register(_StateCollector(self))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.observe(method if method in METHODS else "other", route, status, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTally:
    """HTTP requests by (method, route, status) and their latency by (method, route), as a collector.

    Called on the event loop for every request, so it is a dict lookup and a few additions;
    prometheus_client's Counter and Histogram take a lock per value and cost several times more.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # (method, route) -> [count per bucket (not cumulative; the last is +Inf), sum of seconds]
        self.latency: dict[tuple[str, str], list] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        entry = self.latency.get(key[:2])
        if entry is None:
            entry = self.latency[key[:2]] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        entry[0][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        entry[1] += seconds

    def describe(self):
        return []

    def collect(self):
        requests = CounterMetricFamily("storaged_http_requests", "HTTP requests by method, route template and status.",
                                       labels=["method", "route", "status"])
        for (method, route, status), n in list(self.counts.items()):
            requests.add_metric([method, route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("storaged_http_request_duration_seconds",
                                        "Time to a response (headers ready) by method and route template.",
                                        labels=["method", "route"])
        for (method, route), (counts, total) in list(self.latency.items()):
            buckets, running = [], 0
            for bound, n in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), counts):
                running += n
                buckets.append((bound, running))
            latency.add_metric([method, route], buckets, total)
        yield latency


class _StateCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.m
        u = m.usage
        data_bytes = GaugeMetricFamily("storaged_data_bytes", "Bytes per kind of data (cached walk).",
                                       labels=["kind"])
        data_files = GaugeMetricFamily("storaged_data_files", "Files per kind of data (cached walk).",
                                       labels=["kind"])
        jobs = GaugeMetricFamily("storaged_jobs", "Job directories by state (cached walk).", labels=["state"])
        if u is not None:
            for kind, (size, files) in sorted(u.kinds.items()):
                data_bytes.add_metric([kind], size)
                data_files.add_metric([kind], files)
            for state in JOB_STATES:
                jobs.add_metric([state], u.jobs.get(state, 0))
        yield data_bytes
        yield data_files
        yield jobs
        yield GaugeMetricFamily("storaged_job_queue_entries", "Entries in the job queue (cached walk).",
                                value=u.queue if u else 0)
        yield GaugeMetricFamily("storaged_usage_walk_timestamp_seconds", "When the usage walk last finished.",
                                value=u.walked_at if u else 0)
        yield GaugeMetricFamily("storaged_usage_walk_duration_seconds", "How long the last usage walk took.",
                                value=u.duration if u else 0)
        if m.disk is not None:
            free, total = m.disk
            yield GaugeMetricFamily("storaged_filesystem_free_bytes",
                                    "Free bytes (for the daemon) on the data filesystem.", value=free)
            yield GaugeMetricFamily("storaged_filesystem_size_bytes", "Size of the data filesystem.", value=total)
        live = m.live() or {}
        yield GaugeMetricFamily("storaged_jobs_supervised", "Jobs the runner watches right now.",
                                value=live.get("jobs_supervised", 0))
        samples = list(u.samples) if u else []
        for provider in m.providers:
            samples.extend(provider.live())
        yield from _families(samples)
        janitor = live.get("janitor")
        passes = CounterMetricFamily("storaged_janitor_passes", "Janitor passes run.")
        passes.add_metric([], janitor.passes if janitor else 0)
        yield passes
        files = CounterMetricFamily("storaged_janitor_deleted_files", "Items the janitor deleted, by kind.",
                                    labels=["kind"])
        size = CounterMetricFamily("storaged_janitor_deleted_bytes", "Bytes the janitor deleted, by kind.",
                                   labels=["kind"])
        space_files = CounterMetricFamily("storaged_janitor_space_deleted_files",
                                          "Items the janitor deleted to free space (min_free, quota), by kind.",
                                          labels=["kind"])
        space_size = CounterMetricFamily("storaged_janitor_space_deleted_bytes",
                                         "Bytes the janitor deleted to free space (min_free, quota), by kind.",
                                         labels=["kind"])
        if janitor is not None:
            for kind in janitor.kinds:
                files.add_metric([kind.name], janitor.deleted_files.get(kind.name, 0))
                size.add_metric([kind.name], janitor.deleted_bytes.get(kind.name, 0))
                space_files.add_metric([kind.name], janitor.space_deleted_files.get(kind.name, 0))
                space_size.add_metric([kind.name], janitor.space_deleted_bytes.get(kind.name, 0))
        yield files
        yield size
        yield space_files
        yield space_size
        yield GaugeMetricFamily("storaged_janitor_last_pass_timestamp_seconds", "When the last janitor pass ended.",
                                value=(janitor.last_pass or 0) if janitor else 0)


def _families(samples: Iterable[Sample]):
    """Metric families from the families' samples: one per name, labels from its first sample."""
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.name, []).append(sample)
    for name, group in grouped.items():
        labels = [k for k, _v in group[0].labels]
        cls = CounterMetricFamily if group[0].type == "counter" else GaugeMetricFamily
        family = cls(name, group[0].help, labels=labels)
        for sample in group:
            family.add_metric([v for _k, v in sample.labels], sample.value)
        yield family
