"""Downsampling metric curves for charts without hiding spikes: min/max per bucket.

A series of ``(step, value)`` points, steps ascending, is cut into buckets of ``width`` consecutive steps,
aligned on multiples of the width (bucket ``step // width``). Each bucket keeps its lowest and its highest
point; the series keeps its first and last point. A spike is the extreme of its bucket, so it survives,
and the result has at most ``2 * buckets + 2`` points.

Widths are powers of two. That makes buckets nest: two neighbouring buckets of width ``w`` are exactly
one bucket of width ``2w``, so aggregates computed once (in SQL, or cached) can be coarsened without
going back to the points, and a growing series only ever needs its last bucket recomputed. The price is
that a series uses between a half and all of the buckets it is allowed.

Everything here is pure; :mod:`app.runs.repository` computes the same buckets in SQL, and
:mod:`app.runs.service` decides which to use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MIN_POINTS",
    "Bucket",
    "Point",
    "aggregate",
    "bucket_width",
    "coarsen",
    "downsample",
    "max_buckets",
    "points_from_buckets",
    "value_order",
]

Point = tuple[int, float]

# first + last + one bucket's low and high
MIN_POINTS = 4


def value_order(point: Point) -> tuple[bool, float, int]:
    """Sort key of a point by value, ties by step; NaN above everything (as PostgreSQL orders floats),
    so a diverging loss counts as the highest point of its bucket."""
    step, value = point
    nan = math.isnan(value)
    return (nan, 0.0 if nan else value, step)


@dataclass(frozen=True, slots=True)
class Bucket:
    """The points of steps ``[index * width, (index + 1) * width)``: how many, the lowest (earliest step
    among equal values) and the highest (latest step among equal values)."""

    index: int
    count: int
    low: Point
    high: Point

    def merge(self, other: Bucket, index: int) -> Bucket:
        return Bucket(
            index=index,
            count=self.count + other.count,
            low=min(self.low, other.low, key=value_order),
            high=max(self.high, other.high, key=value_order),
        )


def max_buckets(max_points: int) -> int:
    """Buckets allowed for a series of at most ``max_points`` points (its first and last point apart)."""
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}")
    return (max_points - 2) // 2


def bucket_width(first_step: int, last_step: int, buckets: int) -> int:
    """The smallest power of two such that steps ``first_step..last_step`` fall into at most ``buckets``
    aligned buckets."""
    if buckets < 1:
        raise ValueError("at least one bucket is needed")
    width = 1
    while last_step // width - first_step // width + 1 > buckets:
        width *= 2
    return width


def aggregate(points: Iterable[Point], width: int) -> list[Bucket]:
    """The buckets of ``points`` (steps ascending), in step order."""
    buckets: list[Bucket] = []
    index = count = 0
    low = high = (0, 0.0)
    for point in points:
        point_index = point[0] // width
        if count and point_index == index:
            count += 1
            if value_order(point) < value_order(low):
                low = point
            if value_order(point) >= value_order(high):
                high = point
            continue
        if count:
            buckets.append(Bucket(index, count, low, high))
        index, count, low, high = point_index, 1, point, point
    if count:
        buckets.append(Bucket(index, count, low, high))
    return buckets


def coarsen(buckets: Iterable[Bucket], width: int, new_width: int) -> list[Bucket]:
    """``buckets`` of ``width`` regrouped into buckets of ``new_width`` (a multiple of ``width``; both
    powers of two, so every old bucket lies inside exactly one new one)."""
    if new_width % width:
        raise ValueError(f"{new_width} is not a multiple of {width}")
    factor = new_width // width
    merged: list[Bucket] = []
    for bucket in buckets:
        index = bucket.index // factor
        if merged and merged[-1].index == index:
            merged[-1] = merged[-1].merge(bucket, index)
        else:
            merged.append(Bucket(index, bucket.count, bucket.low, bucket.high))
    return merged


def points_from_buckets(buckets: Iterable[Bucket], first: Point, last: Point) -> list[Point]:
    """The series drawn from its buckets: ``first``, each bucket's low and high in step order, ``last``;
    steps ascending and unique."""
    points = [first]
    for bucket in buckets:
        points.extend(sorted({bucket.low, bucket.high}))
    points.append(last)
    points.sort()
    unique: list[Point] = []
    for point in points:
        if not unique or point[0] != unique[-1][0]:
            unique.append(point)
    return unique


def downsample(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most ``max_points`` of ``points`` (steps ascending): all of them when they fit, else the first,
    the last, and each bucket's lowest and highest."""
    if len(points) <= max_points:
        return list(points)
    first, last = points[0], points[-1]
    width = bucket_width(first[0], last[0], max_buckets(max_points))
    return points_from_buckets(aggregate(points, width), first, last)
