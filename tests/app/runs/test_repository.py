"""The runs repository's metric queries: SQL buckets and extents equal to the Python downsampling's."""

from __future__ import annotations

import random

from sqlalchemy.orm import Session

from app.runs import repository
from app.runs.downsample import aggregate
from app.runs.states import RunStatus
from tests.support import TenantKey, insert_metric_points, make_run, noisy_points


def test_sql_buckets_and_extents_match_the_python_ones(session: Session, alice: TenantKey) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    rng = random.Random(3)
    points = [(step, float(rng.randint(0, 9))) for step in sorted(rng.sample(range(5, 20_000), 4000))]
    insert_metric_points(session, run.id, "train", "loss", points)
    insert_metric_points(session, run.id, "eval", "loss", noisy_points(range(0, 20_000, 500)))
    insert_metric_points(session, run.id, "train", "masked_lm_loss", noisy_points(range(10, 100)))
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
