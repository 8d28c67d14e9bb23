"""Health, readiness, metrics, the Celery configuration and enqueueing."""

from __future__ import annotations

import json
import secrets

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.queue import RUN_TASK, celery_config, create_celery, enqueue_run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import REDIS_URL, TenantKey, make_run


def test_healthz_needs_nothing(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_readyz_names_what_is_down(
    settings: Settings, session_factory: sessionmaker[Session], storage: LocalStorage
) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken, session_factory=session_factory, storage=storage)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error")
    assert body["error"]["type"] == "service_unavailable" and "redis" in body["error"]["message"]


def test_metrics(
    client: TestClient, app: FastAPI, alice: TenantKey, session: Session, settings: Settings
) -> None:
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
    assert 'bertpt_runs{status="queued"} 2.0' in text
    assert 'bertpt_runs{status="running"} 1.0' in text
    assert 'bertpt_runs{status="succeeded"} 0.0' in text
    assert f'bertpt_queue_depth{{queue="{settings.training_queue}"}} 2.0' in text


def test_celery_configuration(settings: Settings) -> None:
    config = celery_config(settings)
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["task_acks_late"] is True and config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"] == {"visibility_timeout": settings.visibility_timeout}
    assert config["task_routes"] == {RUN_TASK: {"queue": settings.training_queue}}
    assert create_celery(settings).conf.broker_url == settings.redis_url


def test_enqueue_run_sends_by_name_to_the_training_queue(settings: Settings) -> None:
    queue = f"training-test-{secrets.token_hex(4)}"
    celery = create_celery(settings.model_copy(update={"training_queue": queue}))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        task_id = enqueue_run("run_abc", celery=celery)
        assert client.llen(queue) == 1
        raw = client.lpop(queue)
        assert isinstance(raw, bytes)
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_TASK
        assert message["headers"]["id"] == task_id
        assert message["headers"]["argsrepr"] == "['run_abc']"
    finally:
        # the queue, and the exchange bindings kombu keeps next to it
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
