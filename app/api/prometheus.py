"""Prometheus metrics of one app: HTTP traffic (by route template), runs by status and the depth of each
queue (the training queues of every resource class, the evaluation and analysis queues; both computed when
scraped).

Each app has its own registry, so apps built side by side (tests) do not collide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.models import Run
from app.runs.states import RunStatus

__all__ = ["HttpMetrics", "MetricsMiddleware", "create_registry"]

logger = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "bertpt_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "bertpt_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )


class MetricsMiddleware:
    """Counts and times every HTTP request, labelled by the matched route's template (``/v1/corpora/
    {corpus_id}``, never the raw path, which would explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # path_format: the template without convertors (``{run_id}``, not ``{run_id:id}``).
            template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)


class RunsByStatusCollector(Collector):
    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("bertpt_runs", "Runs by status (all tenants).", labels=["status"])
        try:
            with self.session_factory() as session:
                rows = session.execute(select(Run.status, func.count()).group_by(Run.status))
                counts = {status: count for status, count in rows}
        except Exception as exc:  # a scrape must not fail because the database is down
            logger.warning("runs-by-status metric unavailable: %s", type(exc).__name__)
            return
        for status in RunStatus:
            gauge.add_metric([status.value], counts.get(status, 0))
        yield gauge


class QueueDepthCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings = self.settings
        queues = list(
            dict.fromkeys(
                [
                    settings.training_queue,
                    *settings.training_queues(),  # one per resource class
                    settings.evaluation_queue_name(),
                    settings.analysis_queue_name(),
                ]
            )
        )
        try:
            client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
            with client:
                pipeline = client.pipeline(transaction=False)
                for queue in queues:
                    pipeline.llen(queue)  # Celery's Redis transport keeps a queue as a list
                depths = [int(depth) for depth in pipeline.execute()]
        except redis.RedisError as exc:
            logger.warning("queue-depth metric unavailable: %s", type(exc).__name__)
            return
        gauge = GaugeMetricFamily(
            "bertpt_queue_depth",
            "Tasks waiting in a Celery queue (not yet taken by a worker).",
            labels=["queue"],
        )
        for queue, depth in zip(queues, depths, strict=True):
            gauge.add_metric([queue], depth)
        yield gauge


def create_registry(
    settings: Settings, session_factory: Callable[[], Session]
) -> tuple[CollectorRegistry, HttpMetrics]:
    """The registry ``/metrics`` exposes, and the HTTP metrics to record into. When the API runs as
    several processes (``PROMETHEUS_MULTIPROC_DIR`` set, see :mod:`app.api.server`), each process's
    counts go to files there and the registry adds up those of every process."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        metrics = HttpMetrics(CollectorRegistry())  # recorded through the files, exposed by the collector
    else:
        metrics = HttpMetrics(registry)
    registry.register(RunsByStatusCollector(session_factory))
    registry.register(QueueDepthCollector(settings))
    return registry, metrics
