"""The runs routes: each needs a key, answers 404 for another tenant's run, and is in the OpenAPI schema;
their parameters accept what the schema declares, and only that."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Run
from app.runs.states import RunStatus
from tests.support import TenantKey, add_checkpoint_row, assert_error, insert_metric_points, make_run

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


# -- what the parameters accept is what the schema declares -------------------------------------------------


def parameter_schema(client: TestClient, path: str, method: str, name: str) -> dict[str, Any]:
    operation = client.get("/openapi.json").json()["paths"][path][method]
    schema: dict[str, Any] = next(p for p in operation["parameters"] if p["name"] == name)["schema"]
    return schema


@pytest.mark.parametrize(
    ("value", "statuses"),
    [
        ("queued", {"queued"}),
        ("succeeded,failed", {"succeeded", "failed"}),
        (" succeeded , failed ", {"succeeded", "failed"}),
        (",,queued,", {"queued"}),
        ("", set(RunStatus)),  # no status named: every run
        (" ", set(RunStatus)),
    ],
)
def test_the_status_filter_takes_what_its_schema_allows(
    client: TestClient, alice: TenantKey, session: Session, value: str, statuses: set[str]
) -> None:
    for status in RunStatus:
        make_run(session, alice.tenant, status=status)
    pattern = parameter_schema(client, "/v1/runs", "get", "status")["anyOf"][0]["items"]["pattern"]
    assert re.fullmatch(pattern, value)
    response = client.get("/v1/runs", params={"status": value, "limit": 100}, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert {run["status"] for run in response.json()["data"]} == statuses


@pytest.mark.parametrize("value", ["paused", "queued;running", "\tqueued", "queued\n", "Queued"])
def test_a_status_filter_its_schema_refuses_is_a_422(
    client: TestClient, alice: TenantKey, value: str
) -> None:
    pattern = parameter_schema(client, "/v1/runs", "get", "status")["anyOf"][0]["items"]["pattern"]
    assert not re.fullmatch(pattern, value)
    error = assert_error(
        client.get("/v1/runs", params={"status": value}, headers=alice.headers),
        422,
        "validation_error",
        "status",
    )
    assert "queued, preparing, running" in error["message"]


def test_metric_names_are_any_text_the_database_can_hold(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    insert_metric_points(session, run.id, "train", "loss", [(1, 2.0), (2, 1.5)])
    url = f"/v1/runs/{run.id}/metrics"
    # Names no series has (longer than any metric name, or many of them) answer no series, like unknown ones.
    many = ",".join(f"metric_{i}" for i in range(200))
    for names in ["x" * 300, many, f"loss,{many}"]:
        response = client.get(url, params={"names": names}, headers=alice.headers)
        assert response.status_code == 200, response.text
        assert [series["name"] for series in response.json()["series"]] == (
            ["loss"] if "loss" in names else []
        )
    # PostgreSQL cannot compare text holding a NUL: the schema says so, and the request is refused.
    items = parameter_schema(client, url.replace(run.id, "{run_id}"), "get", "names")["anyOf"][0]["items"]
    assert not re.fullmatch(items["pattern"], "loss\x00")
    assert_error(
        client.get(url, params={"names": "loss\x00"}, headers=alice.headers),
        422,
        "validation_error",
        "names.0",
    )


def test_a_step_past_the_largest_one_stored_is_refused_as_the_schema_says(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    path = "/v1/runs/{run_id}/checkpoints/{step}/download"
    largest = parameter_schema(client, path, "get", "step")["maximum"]
    assert largest == 2**63 - 1  # a bigint column
    url = path.replace("{run_id}", run.id)
    assert_error(client.get(url.format(step=largest), headers=alice.headers), 404, "not_found", "step")
    assert_error(
        client.get(url.format(step=largest + 1), headers=alice.headers), 422, "validation_error", "step"
    )


def test_a_body_that_is_not_json_text_is_a_documented_400(client: TestClient, alice: TenantKey) -> None:
    response = client.post(
        "/v1/runs", content=b"\xff\xfe{", headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_request")
    responses = client.get("/openapi.json").json()["paths"]["/v1/runs"]["post"]["responses"]
    assert responses["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
