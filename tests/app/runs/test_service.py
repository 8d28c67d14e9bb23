"""Runs after their submission: listing, cancel, delete and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import get_live_publisher, get_run_enqueuer
from app.ids import new_id
from app.models import Corpus, Run, RunEvent, RunMetric
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import claim_run
from app.runs.live import LiveMessage, StatusMessage
from app.runs.schemas import RunEventPublic
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import TenantKey, add_checkpoint_row, assert_error, make_run, write_complete_checkpoint


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


# -- resume ----------------------------------------------------------------------------------------------


@pytest.fixture
def sent(app: FastAPI) -> list[str]:
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    return sent


def _corpus_row(session: Session, tenant: Any) -> str:
    corpus = Corpus(id=new_id("corp"), tenant_id=tenant.id, name="c", filename="c.txt", storage_key="k",
                    bytes=1, sha256="0" * 64, documents=3, sentences=9)  # fmt: skip
    session.add(corpus)
    session.commit()
    return corpus.id


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.CANCELLED])
def test_resume_a_failed_or_cancelled_run_from_its_newest_checkpoint(
    client: TestClient,
    alice: TenantKey,
    session: Session,
    published: list[Any],
    sent: list[str],
    storage: LocalStorage,
    status: RunStatus,
) -> None:
    run = make_run(
        session,
        alice.tenant,
        status=status,
        attempt=3,
        corpus_id=_corpus_row(session, alice.tenant),
        cancel_requested=status == RunStatus.CANCELLED,
        finished_at=datetime.now(UTC),
        error={"type": "training_process_died", "message": "killed"},
    )
    for step in (10, 20):
        write_complete_checkpoint(storage, run.id, step)

    response = client.post(f"/v1/runs/{run.id}/resume", headers=alice.headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["error"], body["finished_at"], body["cancel_requested"]) == (
        "queued",
        None,
        None,
        False,
    )
    assert sent == [run.id]
    session.refresh(run)
    assert run.resumed_after_attempt == 3  # MAX_ATTEMPTS more attempts from here
    events = client.get(f"/v1/runs/{run.id}/events", headers=alice.headers).json()["data"]
    assert events[-1]["type"] == "resumed" and events[-1]["data"]["checkpoint_step"] == 20
    assert "continues from the checkpoint of step 20" in events[-1]["message"]
    statuses = [message.status for _, message in published if isinstance(message, StatusMessage)]
    assert statuses == [RunStatus.QUEUED]
    # The next worker claims it as a new attempt.
    claimed = claim_run(session, run.id, "worker-1")
    assert claimed is not None and (claimed.attempt, claimed.resumed_after_attempt) == (4, 3)


@pytest.mark.parametrize(
    ("status", "checkpoint", "message"),
    [
        (RunStatus.SUCCEEDED, True, "is succeeded (finished); only a failed or cancelled run can be resumed"),
        (RunStatus.RUNNING, True, "is running (not finished); only a failed or cancelled run can be resumed"),
        (RunStatus.QUEUED, False, "is queued (not finished)"),
        (RunStatus.FAILED, False, "kept no checkpoint, so there is nothing to resume from"),
    ],
)
def test_resume_refuses_what_cannot_be_resumed(
    client: TestClient,
    alice: TenantKey,
    session: Session,
    sent: list[str],
    storage: LocalStorage,
    status: RunStatus,
    checkpoint: bool,
    message: str,
) -> None:
    run = make_run(session, alice.tenant, status=status, corpus_id=_corpus_row(session, alice.tenant))
    if checkpoint:
        write_complete_checkpoint(storage, run.id, 10)
    assert (
        message
        in assert_error(client.post(f"/v1/runs/{run.id}/resume", headers=alice.headers), 409, "conflict")[
            "message"
        ]
    )
    session.refresh(run)
    assert run.status == status and sent == []


def test_resume_refuses_a_run_whose_corpus_was_deleted(
    client: TestClient, alice: TenantKey, session: Session, sent: list[str], storage: LocalStorage
) -> None:
    """A corpus deleted after the run ended leaves NULL; the run's preparing event says what it used."""
    corpus_id = _corpus_row(session, alice.tenant)
    run = make_run(session, alice.tenant, status=RunStatus.FAILED, corpus_id=corpus_id)
    write_complete_checkpoint(storage, run.id, 10)
    inputs = {"corpus_id": corpus_id, "eval_corpus_id": "corp_gone", "reference_corpus_id": None}
    add_event(session, run.id, RunEventType.PREPARING, "preparing", data=inputs)
    session.commit()
    error = assert_error(client.post(f"/v1/runs/{run.id}/resume", headers=alice.headers), 409, "conflict")
    assert error["message"].endswith("its eval corpus corp_gone was deleted; submit a new run")
    assert sent == []


def test_resume_refuses_a_run_whose_replay_corpus_was_deleted(
    client: TestClient, alice: TenantKey, session: Session, sent: list[str], storage: LocalStorage
) -> None:
    corpus_id = _corpus_row(session, alice.tenant)
    run = make_run(session, alice.tenant, status=RunStatus.CANCELLED, corpus_id=corpus_id)
    write_complete_checkpoint(storage, run.id, 10)
    inputs = {"corpus_id": corpus_id, "replay_corpus_id": "corp_general"}
    add_event(session, run.id, RunEventType.PREPARING, "preparing", data=inputs)
    session.commit()
    error = assert_error(client.post(f"/v1/runs/{run.id}/resume", headers=alice.headers), 409, "conflict")
    assert error["message"].endswith("its replay corpus corp_general was deleted; submit a new run")
    assert sent == []


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
