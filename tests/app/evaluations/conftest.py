"""Evaluation test fixtures: the tasks sent (the Celery clients replaced at the boundary), a dataset of
alice's uploaded through the API, a succeeded run of hers whose final model is in storage."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_evaluation_enqueuer, get_run_enqueuer
from app.models import Run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.storage.keys import run_model_key
from tests.support import TenantKey, make_run, topic_dataset_tsv


@pytest.fixture
def sent(app: FastAPI) -> dict[str, list[str]]:
    """The ids sent to the queues, by kind: ``{"runs": [...], "evaluations": [...]}``."""
    sent: dict[str, list[str]] = {"runs": [], "evaluations": []}
    app.dependency_overrides[get_run_enqueuer] = lambda: sent["runs"].append
    app.dependency_overrides[get_evaluation_enqueuer] = lambda: sent["evaluations"].append
    return sent


def upload_dataset(client: TestClient, who: TenantKey, content: bytes) -> str:
    response = client.post("/v1/datasets", files={"file": ("topics.tsv", content)}, headers=who.headers)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


@pytest.fixture
def dataset_id(client: TestClient, alice: TenantKey, documents: list[list[str]]) -> str:
    return upload_dataset(client, alice, topic_dataset_tsv(documents))


@pytest.fixture
def succeeded_run(session: Session, alice: TenantKey, storage: LocalStorage) -> Run:
    """A succeeded run of alice's with its final model's directory in storage (run:<id> resolves)."""
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    run.output_storage_key = run_model_key(run.id)
    session.commit()
    storage.local_path(run.output_storage_key).mkdir(parents=True)
    return run


@pytest.fixture
def evaluate(client: TestClient, alice: TenantKey, dataset_id: str, sent: Any) -> Any:
    """``evaluate(who=alice, **body) -> response`` of POST /v1/evaluations; the body defaults to alice's
    dataset and the built-in model."""

    def post(who: TenantKey = alice, **body: Any) -> Any:
        body = {"dataset_id": dataset_id, "models": ["minilm-l6-h384-uncased"], **body}
        return client.post("/v1/evaluations", json=body, headers=who.headers)

    return post
