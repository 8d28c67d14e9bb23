"""A run's metric curves as the API serves them: each series downsampled to min/max buckets
(:mod:`app.runs.downsample`), cached between requests while it grows."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from app.models import Run, Tenant
from app.runs import repository
from app.runs.downsample import Bucket, Point, bucket_width, coarsen, max_buckets, points_from_buckets
from app.runs.schemas import MetricSeries, MetricsPublic
from app.runs.service import get_run

__all__ = ["MetricBucketCache", "MetricsQuery", "get_metrics"]


@dataclass(frozen=True)
class MetricsQuery:
    names: Sequence[str] | None = None
    split: str | None = None
    since_step: int | None = None
    until_step: int | None = None
    max_points: int = 1000


@dataclass(frozen=True)
class _CachedSeries:
    first_step: int
    last_step: int
    width: int
    buckets: list[Bucket]
    final: bool  # computed after the run ended: the series cannot change any more
    # The series drawn from these buckets, by (first point, last point): repeated polls of an unchanged
    # series reuse it.
    drawn: dict[tuple[Point, Point], list[Point]] = field(default_factory=dict, compare=False)

    @property
    def tail_start(self) -> int:
        """The first step of the last bucket: where new points may still land."""
        return self.buckets[-1].index * self.width


BucketFetcher = Callable[[int, int], list[Bucket]]  # (width, since_step) -> buckets up to the last step


class MetricBucketCache:
    """Min/max buckets of whole series, kept between requests (per API process, least recently used
    evicted), so that a chart polled by many clients costs index probes rather than a pass over every
    point.

    Metrics are appended by step, and buckets nest (:mod:`app.runs.downsample`), so when a series grows
    only its last bucket and the new ones are aggregated again, and when it outgrows its bucket width,
    cached buckets are merged pairwise; while its first and last steps stay the same it is not read at
    all. A run's series are recomputed once from scratch after the run ends, so the final picture is
    exact even if points arrived out of order meanwhile (a retried batch below the newest step).
    """

    def __init__(self, max_series: int = 4096) -> None:
        self.max_series = max_series
        self._entries: OrderedDict[tuple[Any, ...], _CachedSeries] = OrderedDict()
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def buckets(
        self,
        key: tuple[Any, ...],
        first_step: int,
        last_step: int,
        allowed: int,
        *,
        final: bool,
        fetch: BucketFetcher,
    ) -> list[Bucket]:
        width = bucket_width(first_step, last_step, allowed)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one computation per series at a time; the others then find it cached
            with self._guard:
                entry = self._entries.get(key)
            # Computed while the run was still going and it has ended since: recompute once, exactly.
            if entry is None or (final and not entry.final):
                buckets = fetch(width, first_step)
            elif (entry.first_step, entry.last_step) == (first_step, last_step):
                buckets = entry.buckets  # nothing new
            elif entry.first_step == first_step and entry.width <= width and last_step >= entry.tail_start:
                buckets = entry.buckets[:-1] + fetch(entry.width, entry.tail_start)
                if width > entry.width:
                    buckets = coarsen(buckets, entry.width, width)
            else:
                buckets = fetch(width, first_step)
            self._store(key, _CachedSeries(first_step, last_step, width, buckets, final))
        return buckets

    def points(self, key: tuple[Any, ...], buckets: list[Bucket], first: Point, last: Point) -> list[Point]:
        """:func:`points_from_buckets`, remembered while the series cached under ``key`` is unchanged
        (``buckets`` is what :meth:`buckets` returned for it)."""
        with self._guard:
            entry = self._entries.get(key)
        if entry is None or entry.buckets is not buckets:
            return points_from_buckets(buckets, first, last)
        drawn = entry.drawn.get((first, last))
        if drawn is None:
            drawn = entry.drawn[(first, last)] = points_from_buckets(buckets, first, last)
        return drawn

    def _store(self, key: tuple[Any, ...], entry: _CachedSeries) -> None:
        with self._guard:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_series:
                old, _ = self._entries.popitem(last=False)
                self._locks.pop(old, None)


def get_metrics(
    session: Session, tenant: Tenant, run_id: str, query: MetricsQuery, *, cache: MetricBucketCache
) -> MetricsPublic:
    """The run's metric series, each downsampled to at most ``max_points`` points (min/max per bucket,
    first and last point kept); points whose value is not finite come back as null. Only series with
    points in the steps asked for are listed: none for a range that holds no step (``since_step`` past
    the last step, or after ``until_step``), as for any other empty range."""
    run = get_run(session, tenant, run_id)
    extents = repository.metric_extents(
        session,
        run.id,
        split=query.split,
        names=query.names,
        since_step=query.since_step,
        until_step=query.until_step,
    )
    series = []
    for extent in extents:
        drawn = _series_points(session, run, extent, query, cache)
        points = [(step, value if math.isfinite(value) else None) for step, value in drawn]
        # Built from our own rows, already of the schema's types: not validated again, point by point.
        series.append(MetricSeries.model_construct(name=extent.name, split=extent.split, points=points))
    return MetricsPublic.model_construct(series=series)


def _series_points(
    session: Session,
    run: Run,
    extent: repository.SeriesExtent,
    query: MetricsQuery,
    cache: MetricBucketCache,
) -> list[Point]:
    first, last = extent.first, extent.last

    def points() -> list[Point]:
        return repository.metric_points(
            session, run.id, extent.split, extent.name, since_step=first[0], until_step=last[0]
        )

    if last[0] - first[0] + 1 <= query.max_points:  # no more points than steps: they all fit
        return points()

    def fetch(width: int, since_step: int) -> list[Bucket]:
        return repository.metric_buckets(
            session, run.id, extent.split, extent.name, width=width, since_step=since_step, until_step=last[0]
        )

    allowed = max_buckets(query.max_points)
    if query.since_step is None and query.until_step is None:
        key = (run.id, extent.split, extent.name, allowed)
        buckets = cache.buckets(key, first[0], last[0], allowed, final=run.status.is_terminal, fetch=fetch)
        draw: Callable[[list[Bucket], Point, Point], list[Point]] = partial(cache.points, key)
    else:
        buckets = fetch(bucket_width(first[0], last[0], allowed), first[0])
        draw = points_from_buckets
    if sum(bucket.count for bucket in buckets) <= query.max_points:
        return points()
    return draw(buckets, first, last)
