"""What the routes share: an id in a path is what app.ids makes, declared in the schema; anything else
(a NUL character included, which PostgreSQL cannot even compare) names nothing and is a 422, whose body is
the one error body, as every error the schema documents."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.ids import new_id
from tests.support import TenantKey, assert_error

ID_PATHS = [
    ("GET", "/v1/runs/{run_id}", "run_id"),
    ("DELETE", "/v1/runs/{run_id}", "run_id"),
    ("GET", "/v1/runs/{run_id}/metrics", "run_id"),
    ("GET", "/v1/corpora/{corpus_id}", "corpus_id"),
    ("DELETE", "/v1/corpora/{corpus_id}", "corpus_id"),
    ("GET", "/v1/checkpoints/{checkpoint_id}", "checkpoint_id"),
    ("DELETE", "/v1/checkpoints/{checkpoint_id}", "checkpoint_id"),
]


@pytest.mark.parametrize(("method", "path", "param"), ID_PATHS)
def test_an_id_in_a_path_is_declared_and_checked(
    client: TestClient, alice: TenantKey, method: str, path: str, param: str
) -> None:
    operation = client.get("/openapi.json").json()["paths"][path][method.lower()]
    schema = next(p for p in operation["parameters"] if p["name"] == param)["schema"]
    assert schema["maxLength"] == 40
    missing = new_id("none")  # an id, of nothing
    assert re.fullmatch(schema["pattern"], missing)
    response = client.request(method, path.replace(f"{{{param}}}", missing), headers=alice.headers)
    assert_error(response, 404, "not_found")
    for not_an_id in ["run_%00", "nope", "run_a%20b", "run_%C3%A9"]:
        response = client.request(method, path.replace(f"{{{param}}}", not_an_id), headers=alice.headers)
        assert_error(response, 422, "validation_error", param)


def test_every_error_the_schema_documents_has_the_one_error_body(client: TestClient) -> None:
    """A 422 included: FastAPI documents its own validation body (``HTTPValidationError``) unless told."""
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and status != "503":  # /readyz's 503 is its own body
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
