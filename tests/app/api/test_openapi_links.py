"""The links of the OpenAPI schema: from each response naming a run, corpus or checkpoint to every
operation that takes its id, each one a valid OpenAPI link to an operation of the schema."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.openapi_links import RESOURCES


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json())


def links_of(spec: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    return dict(spec["paths"][path][method.lower()]["responses"][status].get("links", {}))


def operation_ids(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        operation["operationId"]: (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def test_a_submitted_run_links_to_every_operation_on_it(spec: dict[str, Any]) -> None:
    targets = operation_ids(spec)
    for status in ("201", "200"):  # created, or the run an Idempotency-Key already created
        links = links_of(spec, "POST", "/v1/runs", status)
        linked = {targets[link["operationId"]] for link in links.values()}
        assert linked == {
            ("GET", "/v1/runs/{run_id}"),
            ("DELETE", "/v1/runs/{run_id}"),
            ("POST", "/v1/runs/{run_id}/cancel"),
            ("POST", "/v1/runs/{run_id}/resume"),
            ("GET", "/v1/runs/{run_id}/metrics"),
            ("GET", "/v1/runs/{run_id}/plot.png"),
            ("GET", "/v1/runs/{run_id}/plot.svg"),
            ("GET", "/v1/runs/{run_id}/events"),
            ("GET", "/v1/runs/{run_id}/stream"),
            ("GET", "/v1/runs/{run_id}/checkpoints"),
            ("GET", "/v1/runs/{run_id}/model"),
        }
        assert all(link["parameters"] == {"run_id": "$response.body#/id"} for link in links.values())


def test_a_list_links_from_its_newest_item(spec: dict[str, Any]) -> None:
    get_corpus = spec["paths"]["/v1/corpora/{corpus_id}"]["get"]["operationId"]
    link = links_of(spec, "GET", "/v1/corpora", "200")[get_corpus]
    assert link["parameters"] == {"corpus_id": "$response.body#/data/0/id"}


def test_a_corpus_or_checkpoint_links_to_the_run_it_may_start(spec: dict[str, Any]) -> None:
    submit = spec["paths"]["/v1/runs"]["post"]["operationId"]
    assert links_of(spec, "POST", "/v1/corpora", "201")[submit]["requestBody"] == {
        "corpus_id": "$response.body#/id"
    }
    assert links_of(spec, "GET", "/v1/checkpoints", "200")[submit]["requestBody"] == {
        "base_model": "checkpoint:{$response.body#/data/0/id}"
    }


def test_a_runs_checkpoints_link_to_their_download(spec: dict[str, Any]) -> None:
    download = spec["paths"]["/v1/runs/{run_id}/checkpoints/{step}/download"]["get"]["operationId"]
    link = links_of(spec, "GET", "/v1/runs/{run_id}/checkpoints", "200")[download]
    assert link["parameters"] == {"run_id": "$request.path.run_id", "step": "$response.body#/0/step"}


def test_every_link_names_an_operation_and_its_parameters(spec: dict[str, Any]) -> None:
    targets = operation_ids(spec)
    count = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for name, link in response.get("links", {}).items():
                    count += 1
                    assert name == link["operationId"] and name in targets, (method, path, status, name)
                    target_method, target_path = targets[name]
                    for parameter in link.get("parameters", {}):
                        assert f"{{{parameter}}}" in target_path, (method, path, name, parameter)
                    assert (target_method, target_path) != (method.upper(), path)
    # Every answer of RESOURCES carries links.
    assert all(
        links_of(spec, answer.method, answer.path, status)
        for answers in RESOURCES.values()
        for answer in answers
        for status in answer.statuses
    )
    assert count > 50
