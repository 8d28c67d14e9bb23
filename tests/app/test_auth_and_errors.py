"""Authentication, tenant scoping and the error body of every failure."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.tenants.service import create_api_key, revoke_api_key
from tests.app.conftest import TenantKey
from worker.pretraining.hyperparameters import load_hyperparameters

PROTECTED = [
    ("GET", "/v1/corpora"),
    ("POST", "/v1/corpora"),
    ("GET", "/v1/corpora/corp_x"),
    ("DELETE", "/v1/corpora/corp_x"),
    ("GET", "/v1/checkpoints"),
    ("POST", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints/ckpt_x"),
    ("DELETE", "/v1/checkpoints/ckpt_x"),
    ("GET", "/v1/models"),
]


def assert_error(response: Any, status: int, error_type: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "param"}
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert body["error"]["param"] == param
    return body["error"]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_needs_a_key(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    error = assert_error(response, 401, "unauthorized")
    assert "Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer bpt_not-a-real-key-000000000000000000000000000000",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ],
)
def test_bad_keys_are_refused(client: TestClient, alice: TenantKey, authorization: str) -> None:
    assert_error(client.get("/v1/corpora", headers={"Authorization": authorization}), 401, "unauthorized")


def test_revoked_key_is_refused(client: TestClient, session: Session, alice: TenantKey) -> None:
    assert client.get("/v1/corpora", headers=alice.headers).status_code == 200
    second = create_api_key(session, alice.tenant)
    revoke_api_key(session, second.api_key.id)
    session.commit()
    response = client.get("/v1/corpora", headers={"Authorization": f"Bearer {second.key}"})
    assert_error(response, 401, "unauthorized")
    assert client.get("/v1/corpora", headers=alice.headers).status_code == 200  # the other key still works


def test_only_the_hash_of_a_key_is_stored(session: Session, alice: TenantKey) -> None:
    issued = create_api_key(session, alice.tenant)
    assert issued.key.startswith("bpt_") and len(issued.key) == 4 + 43
    assert issued.api_key.prefix == issued.key[:12]
    assert issued.key not in (issued.api_key.key_hash, issued.api_key.id)


def test_keys_never_reach_the_logs(
    client: TestClient, alice: TenantKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/v1/corpora", headers=alice.headers)
    client.get("/v1/corpora", headers={"Authorization": "Bearer bpt_wrong"})
    assert alice.key not in caplog.text
    assert "bpt_wrong" not in caplog.text


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_wrong_method_is_a_json_405(client: TestClient, alice: TenantKey) -> None:
    assert_error(client.put("/v1/corpora", headers=alice.headers), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=101", "limit")]
)
def test_request_validation_errors_name_the_field(
    client: TestClient, alice: TenantKey, query: str, param: str
) -> None:
    error = assert_error(
        client.get(f"/v1/corpora?{query}", headers=alice.headers), 422, "validation_error", param
    )
    assert error["message"].startswith(f"{param}: ")


def test_bad_cursor_is_a_validation_error(client: TestClient, alice: TenantKey) -> None:
    assert_error(
        client.get("/v1/corpora?after=garbage", headers=alice.headers), 422, "validation_error", "after"
    )


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/corpora", "/v1/corpora/{corpus_id}", "/v1/checkpoints", "/v1/models", "/readyz"} <= set(
        spec["paths"]
    )
    upload = spec["paths"]["/v1/corpora"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"CorpusPublic", "CorporaPublic", "CheckpointPublic", "ErrorResponse"} <= set(
        spec["components"]["schemas"]
    )
    assert spec["paths"]["/v1/corpora"]["get"]["tags"] == ["corpora"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    assert client.get("/docs").status_code == 200


def test_hyperparameter_and_unexpected_errors_keep_the_body_shape(app: FastAPI) -> None:
    def bad_hyperparameters() -> None:
        load_hyperparameters({"learning_rate": -1.0})

    def crash() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/test/hyperparameters", bad_hyperparameters)
    app.add_api_route("/test/crash", crash)
    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(
            client.get("/test/hyperparameters"), 422, "validation_error", "hyperparameters.learning_rate"
        )
        assert "learning_rate" in error["message"]
        error = assert_error(client.get("/test/crash"), 500, "internal_error")
        assert "secret" not in error["message"]
