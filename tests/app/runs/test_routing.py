"""Resource classes: a run's ``resources`` validated, stored and echoed; its task sent to its class's queue
(the real Celery client and Redis); a queued run that no live worker can take says why, in its JSON and in
one event per attempt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import get_run_enqueuer
from app.config import Settings
from app.estimates.workers import WorkerRegistry, announce_worker, worker_key
from app.models import Run, RunEvent
from app.runs.events import RunEventType
from app.runs.routing import note_waiting_runs
from app.runs.states import RunStatus
from tests.support import TenantKey, assert_error, corpus_bytes, make_run, upload_corpus

MINILM = "minilm-l6-h384-uncased"  # resolved without its files: nothing here trains


@pytest.fixture
def corpus_id(client: TestClient, alice: TenantKey) -> str:
    response = upload_corpus(client, alice, corpus_bytes())
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def queues(settings: Settings, redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """The test's training queues by class; they, and the workers the test announces, deleted at its end."""
    by_class = {name: settings.training_queue_for(name) for name in ("cpu", "gpu")}
    yield by_class
    for queue in by_class.values():
        keys = [queue, f"_kombu.binding.{queue}", *redis_client.keys(worker_key(queue, "*"))]
        redis_client.delete(*keys)


@pytest.fixture
def registry(app: FastAPI, client: TestClient) -> WorkerRegistry:
    """The app's registry of workers, read afresh at every call."""
    registry: WorkerRegistry = app.state.worker_registry
    registry.max_age_seconds = 0
    return registry


def submit(client: TestClient, who: TenantKey, corpus_id: str, **fields: Any) -> Any:
    body = {"base_model": MINILM, "corpus_id": corpus_id, **fields}
    return client.post("/v1/runs", json=body, headers=who.headers)


def task_run_ids(client: redis.Redis, queue: str) -> list[str]:
    """The run ids of the tasks waiting in ``queue`` (Celery's Redis transport: a list of JSON messages)."""
    return [json.loads(raw)["headers"]["argsrepr"][2:-2] for raw in client.lrange(queue, 0, -1)]


def test_resources_are_validated_stored_and_echoed(
    app: FastAPI,
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    session: Session,
    queues: dict[str, str],
) -> None:
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    for resources, param in [
        ({"class": "tpu"}, "resources.class"),
        ({"class": "gpu", "devices": 0}, "resources.devices"),
        ({"class": "gpu", "devices": "two"}, "resources.devices"),
        ({"devices": 2}, "resources.class"),
        ({"class": "gpu", "gpus": 2}, "resources.gpus"),
        ("gpu", "resources"),
    ]:
        error = assert_error(
            submit(client, alice, corpus_id, resources=resources), 422, "validation_error", param
        )
        if param == "resources.class" and "tpu" in json.dumps(resources):
            assert "'cpu' or 'gpu'" in error["message"]
    # The global batch is split over the devices: refused before queueing when it does not divide.
    uneven = submit(
        client, alice, corpus_id, resources={"class": "gpu", "devices": 3}, hyperparameters={"batch_size": 16}
    )
    error = assert_error(uneven, 422, "validation_error", "hyperparameters.batch_size")
    assert "multiple of 3" in error["message"]
    assert sent == [] and session.scalar(select(Run.id).where(Run.tenant_id == alice.tenant.id)) is None

    gpu = submit(client, alice, corpus_id, resources={"class": "gpu", "devices": 2})
    assert gpu.status_code == 201, gpu.text
    assert gpu.json()["resources"] == {"class": "gpu", "devices": 2} and gpu.json()["queue"] == queues["gpu"]
    default = submit(client, alice, corpus_id).json()  # the default class (DEFAULT_RESOURCE_CLASS: cpu)
    assert default["resources"] == {"class": "cpu", "devices": 1} and default["queue"] == queues["cpu"]
    assert session.get_one(Run, gpu.json()["id"]).resources == {"class": "gpu", "devices": 2}
    assert session.get_one(Run, default["id"]).resources == {"class": "cpu", "devices": 1}
    listed = client.get("/v1/runs", headers=alice.headers).json()["data"]
    assert {run["id"]: run["queue"] for run in listed} == {
        gpu.json()["id"]: queues["gpu"],
        default["id"]: queues["cpu"],
    }
    cancelled = client.post(f"/v1/runs/{gpu.json()['id']}/cancel", headers=alice.headers).json()
    assert cancelled["resources"] == {"class": "gpu", "devices": 2} and cancelled["waiting_reason"] is None
    # A run from before resource classes: the default class, one device.
    old = make_run(session, alice.tenant)
    shown = client.get(f"/v1/runs/{old.id}", headers=alice.headers).json()
    assert shown["resources"] == {"class": "cpu", "devices": 1} and shown["queue"] == queues["cpu"]


def test_an_idempotent_repeat_without_resources_still_matches(
    app: FastAPI, client: TestClient, alice: TenantKey, corpus_id: str
) -> None:
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda run_id: None
    headers = {**alice.headers, "Idempotency-Key": "same"}
    body = {"base_model": MINILM, "corpus_id": corpus_id}
    first = client.post("/v1/runs", json=body, headers=headers)
    again = client.post("/v1/runs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/runs", json={**body, "resources": {"class": "gpu"}}, headers=headers)
    assert_error(other, 409, "conflict", "Idempotency-Key")


def test_each_run_is_sent_to_its_class_queue(
    app: FastAPI,
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    settings: Settings,
    redis_client: redis.Redis,
    queues: dict[str, str],
) -> None:
    """The app's own sender (no stand-in): the task of each run lands in its class's queue on Redis."""
    gpu = submit(client, alice, corpus_id, resources={"class": "gpu", "devices": 1}).json()["id"]
    cpu = submit(client, alice, corpus_id, resources={"class": "cpu"}).json()["id"]
    default = submit(client, alice, corpus_id).json()["id"]
    assert task_run_ids(redis_client, queues["gpu"]) == [gpu]
    assert sorted(task_run_ids(redis_client, queues["cpu"])) == sorted([cpu, default])
    assert redis_client.llen(settings.training_queue) == 0  # the bare queue: evaluations and analyses

    # A resume is sent by the same sender: to the run's class's queue again.
    app.state.run_enqueuer(gpu)
    assert task_run_ids(redis_client, queues["gpu"]) == [gpu, gpu]


def test_a_run_no_worker_can_take_says_why(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    settings: Settings,
    session: Session,
    redis_client: redis.Redis,
    registry: WorkerRegistry,
    queues: dict[str, str],
) -> None:
    cpu_queue, gpu_queue = queues["cpu"], queues["gpu"]
    announce_worker(redis_client, settings, "cpu-host:1", slots=1, queues=[cpu_queue], period_seconds=30)
    gpu = submit(client, alice, corpus_id, resources={"class": "gpu", "devices": 2}).json()
    cpu = submit(client, alice, corpus_id).json()
    reason = f"no worker serves {gpu_queue}; start one with `bertpt worker --queues {gpu_queue} --gpus 0,1`"
    assert (gpu["status"], gpu["waiting_reason"]) == ("queued", reason)
    assert cpu["waiting_reason"] is None  # a live worker serves its queue
    assert client.get(f"/v1/runs/{gpu['id']}", headers=alice.headers).json()["waiting_reason"] == reason

    # The housekeeping records it once per attempt, whichever process sweeps first.
    assert gpu["id"] in note_waiting_runs(session, settings, registry)
    assert gpu["id"] not in note_waiting_runs(session, settings, registry)
    session.commit()
    events = client.get(f"/v1/runs/{gpu['id']}/events", headers=alice.headers).json()["data"]
    waiting = [event for event in events if event["type"] == RunEventType.WAITING_FOR_WORKER]
    assert len(waiting) == 1 and waiting[0]["level"] == "warning" and reason in waiting[0]["message"]
    assert waiting[0]["data"] == {
        "queue": gpu_queue,
        "resources": {"class": "gpu", "devices": 2},
        "attempt": 0,
        "reason": reason,
    }
    assert not session.scalars(
        select(RunEvent).where(RunEvent.run_id == cpu["id"], RunEvent.type == RunEventType.WAITING_FOR_WORKER)
    ).all()

    # A GPU worker with one device is not enough for two; one not pinned may have them.
    announce_worker(
        redis_client, settings, "gpu-host:1", slots=1, queues=[gpu_queue], period_seconds=30, devices=1
    )
    shown = client.get(f"/v1/runs/{gpu['id']}", headers=alice.headers).json()
    assert shown["waiting_reason"] == (
        f"no worker of {gpu_queue} has 2 devices (the most any has: 1); start one with "
        f"`bertpt worker --queues {gpu_queue} --gpus 0,1`"
    )
    announce_worker(redis_client, settings, "gpu-host:2", slots=1, queues=[gpu_queue], period_seconds=30)
    assert client.get(f"/v1/runs/{gpu['id']}", headers=alice.headers).json()["waiting_reason"] is None
    assert gpu["id"] not in note_waiting_runs(session, settings, registry)

    # Once it is no longer queued, it waits for nothing.
    redis_client.delete(worker_key(gpu_queue, "gpu-host:1"), worker_key(gpu_queue, "gpu-host:2"))
    session.get_one(Run, gpu["id"]).status = RunStatus.RUNNING
    session.commit()
    assert client.get(f"/v1/runs/{gpu['id']}", headers=alice.headers).json()["waiting_reason"] is None


def test_without_announcements_to_read_no_reason_is_given(
    app: FastAPI, client: TestClient, alice: TenantKey, corpus_id: str, settings: Settings, session: Session
) -> None:
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda run_id: None
    unreachable = WorkerRegistry(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), settings)
    app.state.worker_registry = unreachable
    run = submit(client, alice, corpus_id, resources={"class": "gpu"}).json()
    assert run["status"] == "queued" and run["waiting_reason"] is None
    assert note_waiting_runs(session, settings, unreachable) == []
