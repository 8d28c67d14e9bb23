"""The app's error mapping: every failure in one JSON body shape; its OpenAPI schema and docs; what its
lifespan does at start (the sweep of temporary files a dead process left)."""

from __future__ import annotations

import os
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.deps import get_run_enqueuer
from app.config import Settings
from app.storage import LocalStorage
from tests.support import TenantKey, assert_error, corpus_bytes, fake_bert_files, tar_gz, upload_corpus
from worker.pretraining.hyperparameters import load_hyperparameters


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


def test_text_with_a_nul_character_is_refused_whichever_field_holds_it(
    app: FastAPI, client: TestClient, alice: TenantKey, storage: LocalStorage
) -> None:
    """PostgreSQL stores no NUL character, in text or JSON: a request whose free text holds one (a run's
    name or metadata, an upload's name, a checkpoint's config) is a 422, not a 500, and leaves nothing."""
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda run_id: None
    corpus_id = upload_corpus(client, alice, corpus_bytes()).json()["id"]
    run = {"base_model": "minilm-l6-h384-uncased", "corpus_id": corpus_id}
    files = fake_bert_files()
    files["config.json"] = files["config.json"].replace(
        b'"architectures": [', b'"architectures": ["X\\u0000", '
    )
    refused = [
        client.post("/v1/runs", json={**run, "name": "a\x00b"}, headers=alice.headers),
        client.post("/v1/runs", json={**run, "metadata": {"note": "a\x00b"}}, headers=alice.headers),
        upload_corpus(client, alice, corpus_bytes(tag="other"), name="a\x00b"),
        client.post("/v1/checkpoints", files={"file": ("tiny.tar.gz", tar_gz(files))}, headers=alice.headers),
    ]
    for response in refused:
        assert "NUL" in assert_error(response, 422, "validation_error")["message"]
    assert client.get("/v1/runs", headers=alice.headers).json()["data"] == []
    assert [c["id"] for c in client.get("/v1/corpora", headers=alice.headers).json()["data"]] == [corpus_id]
    assert not any((storage.root / "checkpoints").glob("*"))  # the extracted files went with the rollback


def test_the_start_sweeps_what_a_dead_process_left(
    app: FastAPI, settings: Settings, storage: LocalStorage
) -> None:
    """A killed API left empty .part files in the storage's temporary area; a new process removes them,
    but not the ones of uploads in progress in another process."""
    stale = storage.new_temp_path(suffix=".part")
    stale.touch()
    long_ago = time.time() - settings.stale_upload_seconds - 60
    os.utime(stale, (long_ago, long_ago))
    in_progress = storage.new_temp_path(suffix=".part")
    in_progress.write_bytes(b"arriving")
    with TestClient(app):
        assert storage.temporary_entries() == [in_progress]
