"""The runs routes: each needs a key, answers 404 for another tenant's run, and is in the OpenAPI schema."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Run
from app.runs.states import RunStatus
from tests.support import TenantKey, add_checkpoint_row, assert_error, make_run

RUN_ROUTES = [
    ("GET", "/v1/runs/{id}"),
    ("POST", "/v1/runs/{id}/cancel"),
    ("POST", "/v1/runs/{id}/resume"),
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
    assert response.headers["WWW-Authenticate"] == "Bearer"
    if method == "HEAD":  # no body
        assert response.status_code == 401
    else:
        assert "Bearer" in assert_error(response, 401, "unauthorized")["message"]


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
