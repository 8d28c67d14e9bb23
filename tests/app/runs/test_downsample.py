"""The min/max downsampling of metric curves (pure functions): spikes kept, sizes bounded, buckets exact."""

from __future__ import annotations

import math
import random

import pytest

from app.runs.downsample import aggregate, bucket_width, coarsen, downsample, max_buckets, points_from_buckets
from tests.support import assert_well_formed_points, noisy_points


def test_points_that_fit_are_returned_unchanged() -> None:
    points = noisy_points(range(0, 500, 5))
    assert downsample(points, 100) == points
    assert downsample([], 10) == []


@pytest.mark.parametrize("max_points", [4, 5, 10, 101, 500, 1000])
def test_spikes_survive_and_the_size_is_bounded(max_points: int) -> None:
    points = noisy_points(range(1, 100_001))
    points[54_320] = (54_321, 100.0)  # a loss spike
    points[77_776] = (77_777, -50.0)  # and a dip
    result = downsample(points, max_points)
    assert_well_formed_points(result, max_points)
    assert (54_321, 100.0) in result and (77_777, -50.0) in result
    assert result[0] == points[0] and result[-1] == points[-1]


def test_nan_counts_as_the_highest_point_of_its_bucket() -> None:
    points = noisy_points(range(1000))
    points[500] = (500, math.nan)
    result = downsample(points, 50)
    assert any(step == 500 and math.isnan(value) for step, value in result)


def test_bucket_width_is_the_smallest_power_of_two_that_fits() -> None:
    for first, last, buckets in [(0, 0, 1), (0, 99, 10), (5, 100_000, 249), (1, 1, 3), (999, 1_000_001, 7)]:
        width = bucket_width(first, last, buckets)
        assert width & (width - 1) == 0
        assert last // width - first // width + 1 <= buckets
        assert width == 1 or last // (width // 2) - first // (width // 2) + 1 > buckets
    assert max_buckets(4) == 1 and max_buckets(1000) == 499
    with pytest.raises(ValueError):
        max_buckets(3)


def test_coarsened_buckets_equal_buckets_computed_at_that_width() -> None:
    rng = random.Random(7)
    points = [
        (step, float(rng.randint(0, 5))) for step in sorted(rng.sample(range(10_000), 3000))
    ]  # many ties
    fine = aggregate(points, 8)
    for factor in (2, 4, 64):
        assert coarsen(fine, 8, 8 * factor) == aggregate(points, 8 * factor)
    with pytest.raises(ValueError):
        coarsen(fine, 8, 12)


def test_ties_keep_the_earliest_low_and_the_latest_high() -> None:
    (bucket,) = aggregate([(0, 1.0), (1, 1.0), (2, 1.0)], 4)
    assert (bucket.low, bucket.high, bucket.count) == ((0, 1.0), (2, 1.0), 3)
    assert points_from_buckets([bucket], (0, 1.0), (2, 1.0)) == [(0, 1.0), (2, 1.0)]
