"""Prometheus metrics of one service instance (its own registry, served at ``GET /metrics``).

==================================  =========  ==============================================================
name                                type       meaning
==================================  =========  ==============================================================
tki_http_requests_total             counter    requests by ``route`` (path template), ``method``, ``status``
tki_http_request_duration_seconds   histogram  request latency by ``route``
tki_inference_batch_size            histogram  queries (images or vectors) per inference batch
tki_inference_batch_seconds         histogram  time of one batch (embedding + search)
tki_queue_depth                     gauge      jobs waiting for the inference thread
tki_requests_in_flight              gauge      admitted requests not answered yet (decode + queue + batch)
tki_rejected_total                  counter    requests refused by ``reason`` (queue_full, timeout)
tki_gallery_items                   gauge      items in the served gallery version
tki_gallery_version_info            gauge      1 for the served ``version`` label
tki_gallery_reloads_total           counter    versions loaded after start
tki_gallery_reload_failures_total   counter    versions that failed to load (the old one kept serving)
==================================  =========  ==============================================================
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServiceMetrics", "CONTENT_TYPE_LATEST"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The collectors; ``render()`` is the text exposition."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tki_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("tki_http_request_duration_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tki_inference_batch_size", "queries per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("tki_inference_batch_seconds", "time of one inference batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth_gauge = Gauge("tki_queue_depth", "jobs waiting for the inference thread", registry=r)
        self.in_flight = Gauge("tki_requests_in_flight", "admitted requests not answered yet", registry=r)
        self.rejected = Counter("tki_rejected", "requests refused", ["reason"], registry=r)
        self.gallery_items = Gauge("tki_gallery_items", "items in the served gallery version", registry=r)
        self.gallery_version = Gauge("tki_gallery_version_info", "served gallery version", ["version"], registry=r)
        self.reloads = Counter("tki_gallery_reloads", "gallery versions loaded after start", registry=r)
        self.reload_failures = Counter("tki_gallery_reload_failures", "gallery versions that failed to load",
                                       registry=r)

    # BatchObserver
    def batch_done(self, queries: int, seconds: float) -> None:
        self.batch_size.observe(queries)
        self.batch_seconds.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def set_gallery(self, version: str, items: int) -> None:
        self.gallery_version.clear()
        self.gallery_version.labels(version=version or "unversioned").set(1)
        self.gallery_items.set(items)

    def render(self) -> bytes:
        return generate_latest(self.registry)
