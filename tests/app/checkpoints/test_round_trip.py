"""What bertpt lets you download uploads back: a run's final model and its checkpoints (with or without the
optimizer state), downloaded through the API, are accepted by POST /v1/checkpoints and a run starts from
them."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_run_enqueuer
from app.base_models.service import resolve_base_model
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import (
    TINY_HYPERPARAMETERS,
    TenantKey,
    add_checkpoint_row,
    make_run,
    tiny_run_hyperparameters,
    upload_corpus,
)
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, RunLayout, is_training_state

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it

STEP = 2  # the kept checkpoint downloaded


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared-cache")


@pytest.fixture(scope="module")
def trained_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, small_corpus: Path, cache_dir: Path
) -> Path:
    """The directory of a 4-step run of the tiny BERT: its final model and checkpoints at steps 2 and 4."""
    from worker.pretraining.engine import run_pretraining

    out = tmp_path_factory.mktemp("trained") / "run"
    h = tiny_run_hyperparameters(max_steps=4, checkpoint_every_steps=STEP, eval_every_steps=0)
    result = run_pretraining(tiny_bert_dir, small_corpus, out, h, cache_dir=cache_dir)
    assert result.status == "completed"
    return out


@pytest.fixture
def enqueued(app: FastAPI) -> list[str]:
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    return sent


@pytest.mark.parametrize(
    ("download", "training_state"),
    [("model", False), (f"checkpoints/{STEP}/download", False), (f"checkpoints/{STEP}/download", True)],
)
def test_a_downloaded_model_or_checkpoint_uploads_back_and_trains(
    client: TestClient,
    alice: TenantKey,
    session: Session,
    storage: LocalStorage,
    enqueued: list[str],
    trained_dir: Path,
    small_corpus: Path,
    cache_dir: Path,
    tmp_path: Path,
    download: str,
    training_state: bool,
) -> None:
    # The trained run, stored as the worker leaves it.
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    layout = RunLayout(trained_dir)
    stored = RunLayout(storage.local_path(f"runs/{run.id}"))
    shutil.copytree(layout.model, stored.model)
    shutil.copytree(layout.checkpoint(STEP), stored.checkpoint(STEP))
    run.output_storage_key = f"runs/{run.id}/model"
    session.commit()
    add_checkpoint_row(session, run, STEP, key=f"runs/{run.id}/checkpoints/checkpoint-{STEP}")
    source = layout.model if download == "model" else layout.checkpoint(STEP)

    url = f"/v1/runs/{run.id}/{download}" + ("?include_optimizer=true" if training_state else "")
    response = client.get(url, headers=alice.headers)
    assert response.status_code == 200, response.text
    archive = response.content
    filename = response.headers["content-disposition"].split('filename="')[1].rstrip('"')
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert any(is_training_state(Path(name).name) for name in tar.getnames()) is training_state

    uploaded = client.post("/v1/checkpoints", files={"file": (filename, archive)}, headers=alice.headers)
    assert uploaded.status_code == 201, uploaded.text
    body = uploaded.json()
    kept = storage.local_path(f"checkpoints/{body['id']}")
    names = sorted(path.name for path in kept.iterdir())
    manifest = MODEL_MANIFEST if download == "model" else CHECKPOINT_MANIFEST
    assert manifest in names  # provenance: which run, step, corpus and hyperparameters made it
    assert not any(is_training_state(name) for name in names)
    assert (kept / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert json.loads((kept / manifest).read_text()) == json.loads((source / manifest).read_text())
    assert body["has_pretraining_heads"] is True
    if training_state:
        (warning,) = body["warnings"]
        assert warning["code"] == "training_state_left_out"
        assert "optimizer.pt" in warning["message"] and "new optimizer" in warning["message"]
    else:
        assert body["warnings"] == []
    assert "warnings" not in client.get(f"/v1/checkpoints/{body['id']}", headers=alice.headers).json()

    # A run starts from it: accepted by the API, and trained by the library from what the API resolves.
    corpus = upload_corpus(client, alice, small_corpus.read_bytes(), "small.txt")
    assert corpus.status_code in (200, 201), corpus.text
    spec = f"checkpoint:{body['id']}"
    submitted = client.post(
        "/v1/runs",
        json={"base_model": spec, "corpus_id": corpus.json()["id"], "hyperparameters": TINY_HYPERPARAMETERS},
        headers=alice.headers,
    )
    assert submitted.status_code == 201, submitted.text
    assert enqueued == [submitted.json()["id"]]
    _train_from(
        resolve_base_model(session, alice.tenant, spec, storage=storage).source,
        small_corpus,
        cache_dir,
        tmp_path,
    )


def _train_from(base: str, corpus: Path, cache_dir: Path, tmp_path: Path) -> Any:
    from worker.pretraining.engine import run_pretraining

    h = tiny_run_hyperparameters(max_steps=1, checkpoint_every_steps=0, eval_every_steps=0)
    result = run_pretraining(base, corpus, tmp_path / "again", h, cache_dir=cache_dir)
    assert result.status == "completed" and result.steps == 1
    assert (tmp_path / "again" / "model" / "model.safetensors").is_file()
    return result
