"""Runs after their submission: listing, cancel, delete and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import get_live_publisher
from app.models import Run, RunEvent, RunMetric
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import claim_run
from app.runs.live import LiveMessage, StatusMessage
from app.runs.schemas import RunEventPublic
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import TenantKey, add_checkpoint_row, assert_error, make_run


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
