"""Metric curves: the min/max downsampling (pure functions), its SQL twin, and the endpoint with its
filters and its cache."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from app.db import create_db_engine
from app.models import Base, Run, RunMetric, Tenant
from app.runs import repository
from app.runs.downsample import (
    Point,
    aggregate,
    bucket_width,
    coarsen,
    downsample,
    max_buckets,
    points_from_buckets,
)
from app.runs.metric_series import MetricBucketCache, MetricsQuery, get_metrics
from app.runs.states import RunStatus
from tests.support import TenantKey, assert_error, make_run

# -- pure functions --------------------------------------------------------------------------------------


def noisy(steps: Iterable[int], seed: int = 0) -> list[Point]:
    rng = random.Random(seed)
    return [(step, 3.0 + rng.random()) for step in steps]


def assert_well_formed(points: list[Point], max_points: int) -> None:
    assert len(points) <= max_points
    steps = [step for step, _ in points]
    assert steps == sorted(set(steps))


def test_points_that_fit_are_returned_unchanged() -> None:
    points = noisy(range(0, 500, 5))
    assert downsample(points, 100) == points
    assert downsample([], 10) == []


@pytest.mark.parametrize("max_points", [4, 5, 10, 101, 500, 1000])
def test_spikes_survive_and_the_size_is_bounded(max_points: int) -> None:
    points = noisy(range(1, 100_001))
    points[54_320] = (54_321, 100.0)  # a loss spike
    points[77_776] = (77_777, -50.0)  # and a dip
    result = downsample(points, max_points)
    assert_well_formed(result, max_points)
    assert (54_321, 100.0) in result and (77_777, -50.0) in result
    assert result[0] == points[0] and result[-1] == points[-1]


def test_nan_counts_as_the_highest_point_of_its_bucket() -> None:
    points = noisy(range(1000))
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


# -- SQL ---------------------------------------------------------------------------------------------------


def insert_points(session: Session, run_id: str, split: str, name: str, points: Iterable[Point]) -> None:
    rows = [{"run_id": run_id, "split": split, "name": name, "step": s, "value": v} for s, v in points]
    session.execute(insert(RunMetric), rows)
    session.commit()


def test_sql_buckets_and_extents_match_the_python_ones(session: Session, alice: TenantKey) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    rng = random.Random(3)
    points = [(step, float(rng.randint(0, 9))) for step in sorted(rng.sample(range(5, 20_000), 4000))]
    insert_points(session, run.id, "train", "loss", points)
    insert_points(session, run.id, "eval", "loss", noisy(range(0, 20_000, 500)))
    insert_points(session, run.id, "train", "masked_lm_loss", noisy(range(10, 100)))
    for width in (1, 16, 256):
        assert repository.metric_buckets(
            session, run.id, "train", "loss", width=width, since_step=0, until_step=20_000
        ) == aggregate(points, width)
    inside = [p for p in points if 1000 <= p[0] <= 9000]
    assert repository.metric_buckets(
        session, run.id, "train", "loss", width=64, since_step=1000, until_step=9000
    ) == aggregate(inside, 64)

    extents = repository.metric_extents(
        session, run.id, split=None, names=None, since_step=None, until_step=None
    )
    assert [(e.split, e.name) for e in extents] == [
        ("eval", "loss"),
        ("train", "loss"),
        ("train", "masked_lm_loss"),
    ]
    assert extents[1].first == points[0] and extents[1].last == points[-1]
    ranged = repository.metric_extents(
        session, run.id, split="train", names=["loss", "nope"], since_step=1000, until_step=9000
    )
    assert [(e.split, e.name, e.first, e.last) for e in ranged] == [("train", "loss", inside[0], inside[-1])]
    few = [p for p in points if 200 <= p[0] <= 300]
    assert repository.metric_extents(
        session, run.id, split="train", names=None, since_step=200, until_step=300
    ) == [repository.SeriesExtent("train", "loss", few[0], few[-1])]


# -- the endpoint --------------------------------------------------------------------------------------------


@pytest.fixture
def metrics_run(session: Session, alice: TenantKey) -> tuple[str, list[Point]]:
    """A running run with 5k training points per series (a spike in loss), evaluations every 100 steps
    and a reference evaluation."""
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    loss = noisy(range(1, 5001), seed=1)
    loss[2999] = (3000, 42.0)
    insert_points(session, run.id, "train", "loss", loss)
    insert_points(session, run.id, "train", "masked_lm_loss", noisy(range(1, 5001), seed=2))
    insert_points(session, run.id, "train", "learning_rate", [(s, s * 1e-8) for s in range(1, 5001)])
    insert_points(session, run.id, "eval", "loss", noisy(range(0, 5001, 100), seed=3))
    insert_points(session, run.id, "reference", "loss", [(0, 2.0), (5000, 2.1)])
    return run.id, loss


def get_series(
    client: TestClient, who: TenantKey, run_id: str, **params: str | int
) -> dict[tuple[str, str], list[Any]]:
    response = client.get(f"/v1/runs/{run_id}/metrics", params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    return {(s["split"], s["name"]): s["points"] for s in response.json()["series"]}


def test_all_series_downsampled_with_spikes_kept(
    client: TestClient, alice: TenantKey, metrics_run: tuple[str, list[Point]]
) -> None:
    run_id, loss = metrics_run
    series = get_series(client, alice, run_id, max_points=200)
    assert list(series) == [("eval", "loss"), ("reference", "loss"), ("train", "learning_rate"),
                            ("train", "loss"), ("train", "masked_lm_loss")]  # fmt: skip
    for points in series.values():
        assert_well_formed([tuple(p) for p in points], 200)
    assert [3000, 42.0] in series[("train", "loss")]
    assert series[("train", "loss")][0] == list(loss[0]) and series[("train", "loss")][-1] == list(loss[-1])
    assert len(series[("eval", "loss")]) == 51  # fits: every point
    assert series[("reference", "loss")] == [[0, 2.0], [5000, 2.1]]
    # 5,000 points, downsampled to the default of at most 1,000
    default = get_series(client, alice, run_id, names="loss", split="train")
    assert 500 <= len(default[("train", "loss")]) <= 1000


def test_filters(client: TestClient, alice: TenantKey, metrics_run: tuple[str, list[Point]]) -> None:
    run_id, loss = metrics_run
    assert list(get_series(client, alice, run_id, names="loss,masked_lm_loss", split="train")) == [
        ("train", "loss"),
        ("train", "masked_lm_loss"),
    ]
    repeated = client.get(
        f"/v1/runs/{run_id}/metrics?names=loss&names=learning_rate&split=eval", headers=alice.headers
    )
    assert [(s["split"], s["name"]) for s in repeated.json()["series"]] == [("eval", "loss")]
    window = get_series(client, alice, run_id, split="train", names="loss", since_step=2990, until_step=3010)
    assert window[("train", "loss")] == [list(p) for p in loss[2989:3010]]
    zoom = get_series(client, alice, run_id, names="loss", since_step=1000, until_step=4000, max_points=50)
    points = zoom[("train", "loss")]
    assert len(points) <= 50 and points[0][0] == 1000 and points[-1][0] == 4000 and [3000, 42.0] in points
    assert ("eval", "loss") in zoom and all(1000 <= step <= 4000 for step, _ in zoom[("eval", "loss")])
    assert get_series(client, alice, run_id, names="no_such_metric") == {}
    assert get_series(client, alice, run_id, since_step=9000) == {}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("max_points=3", "max_points"),
        ("max_points=100001", "max_points"),
        ("split=test", "split"),
        ("since_step=-1", "since_step"),
        ("since_step=10&until_step=5", "since_step"),
    ],
)
def test_bad_queries(client: TestClient, alice: TenantKey, session: Session, query: str, param: str) -> None:
    run = make_run(session, alice.tenant)
    response = client.get(f"/v1/runs/{run.id}/metrics?{query}", headers=alice.headers)
    assert_error(response, 422, "validation_error", param)


def test_a_growing_series_stays_exact_through_the_cache(
    client: TestClient, alice: TenantKey, session: Session, metrics_run: tuple[str, list[Point]]
) -> None:
    run_id, loss = metrics_run
    first = get_series(client, alice, run_id, names="loss", split="train", max_points=100)[("train", "loss")]
    assert [3000, 42.0] in first
    # The run goes on: three times as many steps (the bucket width doubles twice), a new spike near the end.
    more = noisy(range(5001, 15_001), seed=9)
    more[-3] = (14_998, 99.0)
    insert_points(session, run_id, "train", "loss", more)
    grown = get_series(client, alice, run_id, names="loss", split="train", max_points=100)[("train", "loss")]
    everything = loss + more
    assert grown == [list(p) for p in downsample(everything, 100)]
    assert [14_998, 99.0] in grown and [3000, 42.0] in grown and grown[-1] == list(more[-1])


def test_a_finished_run_is_recomputed_exactly_once(
    client: TestClient, alice: TenantKey, session: Session, metrics_run: tuple[str, list[Point]]
) -> None:
    run_id, loss = metrics_run
    params: dict[str, str | int] = {"names": "loss", "split": "train", "max_points": 100}
    get_series(client, alice, run_id, **params)
    # A point written late, inside buckets the cache considers complete (a retried batch from before).
    session.execute(
        update(RunMetric)
        .where(
            RunMetric.run_id == run_id,
            RunMetric.split == "train",
            RunMetric.name == "loss",
            RunMetric.step == 10,
        )
        .values(value=-7.0)
    )
    run = session.get(Run, run_id)
    assert run is not None
    run.status = RunStatus.SUCCEEDED
    session.commit()
    final = get_series(client, alice, run_id, **params)[("train", "loss")]
    assert [10, -7.0] in final
    expected = [(s, -7.0 if s == 10 else v) for s, v in loss]
    assert final == [list(p) for p in downsample(expected, 100)]


def test_non_finite_values_come_back_as_null(client: TestClient, alice: TenantKey, session: Session) -> None:
    run = make_run(session, alice.tenant)
    insert_points(session, run.id, "train", "loss", [(1, 1.0), (2, math.nan), (3, math.inf)])
    assert get_series(client, alice, run.id)[("train", "loss")] == [[1, 1.0], [2, None], [3, None]]


def test_the_portable_queries_give_the_same_curves_on_sqlite(tmp_path: Path) -> None:
    """The local demo runs on SQLite: no skip scan or array aggregates there, the same answers."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    Base.metadata.create_all(engine)
    points = noisy(range(1, 3001), seed=5)
    points[1234] = (1235, 50.0)
    with Session(engine) as session:
        tenant = Tenant(id="ten_demo", name="demo")
        session.add(tenant)
        session.commit()
        run = make_run(session, tenant, status=RunStatus.RUNNING)
        insert_points(session, run.id, "train", "loss", points)
        insert_points(session, run.id, "eval", "loss", [(0, 3.0), (3000, 2.0)])
        cache = MetricBucketCache()
        for query, expected in [
            (MetricsQuery(max_points=60), {("eval", "loss"): [(0, 3.0), (3000, 2.0)],
                                           ("train", "loss"): downsample(points, 60)}),
            (MetricsQuery(split="train", since_step=1000, until_step=1500, max_points=20),
             {("train", "loss"): downsample(points[999:1500], 20)}),
        ]:  # fmt: skip
            result = get_metrics(session, tenant, run.id, query, cache=cache)
            assert {(s.split, s.name): [tuple(p) for p in s.points] for s in result.series} == expected
    engine.dispose()
