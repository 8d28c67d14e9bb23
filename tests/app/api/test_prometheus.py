"""The service's own Prometheus metrics (/metrics): requests by route, runs by status, queue depth."""

from __future__ import annotations

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Run
from app.runs.states import RunStatus
from tests.support import REDIS_URL, TenantKey, make_run


def test_metrics(
    client: TestClient, app: FastAPI, alice: TenantKey, session: Session, settings: Settings
) -> None:
    # The gauge counts every tenant's runs, and the database is shared by the test session.
    before = {
        status: count
        for status, count in session.execute(select(Run.status, func.count()).group_by(Run.status))
    }
    make_run(session, alice.tenant, status=RunStatus.RUNNING)
    make_run(session, alice.tenant, status=RunStatus.QUEUED)
    make_run(session, alice.tenant, status=RunStatus.QUEUED)
    client.get("/v1/corpora", headers=alice.headers)
    client.get("/v1/corpora/corp_nothing", headers=alice.headers)
    client.get("/no/such/path")
    queue = redis.Redis.from_url(REDIS_URL)
    queue.rpush(settings.training_queue, "a", "b")
    try:
        text = client.get("/metrics").text
    finally:
        queue.delete(settings.training_queue)
    assert 'bertpt_http_requests_total{method="GET",route="/v1/corpora",status="200"} 1.0' in text
    assert 'bertpt_http_requests_total{method="GET",route="/v1/corpora/{corpus_id}",status="404"} 1.0' in text
    assert 'route="<unmatched>"' in text and "/no/such/path" not in text
    assert 'bertpt_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/corpora"}' in text
    for status, added in ((RunStatus.QUEUED, 2), (RunStatus.RUNNING, 1), (RunStatus.SUCCEEDED, 0)):
        assert f'bertpt_runs{{status="{status.value}"}} {before.get(status, 0) + added:.1f}' in text
    assert f'bertpt_queue_depth{{queue="{settings.training_queue}"}} 2.0' in text
