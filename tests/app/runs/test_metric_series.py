"""Metric curves (GET /v1/runs/{id}/metrics): series, filters, the bucket cache, SQLite."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import create_db_engine
from app.models import Base, Run, RunMetric, Tenant
from app.runs.downsample import Point, downsample
from app.runs.metric_series import MetricBucketCache, MetricsQuery, get_metrics
from app.runs.states import RunStatus
from tests.support import (
    TenantKey,
    assert_error,
    assert_well_formed_points,
    insert_metric_points,
    make_run,
    noisy_points,
)


@pytest.fixture
def metrics_run(session: Session, alice: TenantKey) -> tuple[str, list[Point]]:
    """A running run with 5k training points per series (a spike in loss), evaluations every 100 steps
    and a reference evaluation."""
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    loss = noisy_points(range(1, 5001), seed=1)
    loss[2999] = (3000, 42.0)
    insert_metric_points(session, run.id, "train", "loss", loss)
    insert_metric_points(session, run.id, "train", "masked_lm_loss", noisy_points(range(1, 5001), seed=2))
    insert_metric_points(session, run.id, "train", "learning_rate", [(s, s * 1e-8) for s in range(1, 5001)])
    insert_metric_points(session, run.id, "eval", "loss", noisy_points(range(0, 5001, 100), seed=3))
    insert_metric_points(session, run.id, "reference", "loss", [(0, 2.0), (5000, 2.1)])
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
        assert_well_formed_points([tuple(p) for p in points], 200)
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
    # A range that ends before it starts holds no step, like any other empty range (not an error).
    assert get_series(client, alice, run_id, since_step=10, until_step=5) == {}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("max_points=3", "max_points"),
        ("max_points=100001", "max_points"),
        ("split=test", "split"),
        ("since_step=-1", "since_step"),
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
    more = noisy_points(range(5001, 15_001), seed=9)
    more[-3] = (14_998, 99.0)
    insert_metric_points(session, run_id, "train", "loss", more)
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
    insert_metric_points(session, run.id, "train", "loss", [(1, 1.0), (2, math.nan), (3, math.inf)])
    assert get_series(client, alice, run.id)[("train", "loss")] == [[1, 1.0], [2, None], [3, None]]


def test_the_portable_queries_give_the_same_curves_on_sqlite(tmp_path: Path) -> None:
    """The local demo runs on SQLite: no skip scan or array aggregates there, the same answers."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    Base.metadata.create_all(engine)
    points = noisy_points(range(1, 3001), seed=5)
    points[1234] = (1235, 50.0)
    with Session(engine) as session:
        tenant = Tenant(id="ten_demo", name="demo")
        session.add(tenant)
        session.commit()
        run = make_run(session, tenant, status=RunStatus.RUNNING)
        insert_metric_points(session, run.id, "train", "loss", points)
        insert_metric_points(session, run.id, "eval", "loss", [(0, 3.0), (3000, 2.0)])
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
