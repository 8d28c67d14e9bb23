"""Base models: the listing and resolve_base_model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.config import Settings
from app.errors import ValidationFailed
from app.models import RunCheckpoint
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import TenantKey, fake_bert_files, make_run, tar_gz

MINILM = "minilm-l6-h384-uncased"


def upload_checkpoint(client: TestClient, who: TenantKey, name: str = "mine") -> str:
    files = {"file": ("c.tar.gz", tar_gz(fake_bert_files()))}
    response = client.post("/v1/checkpoints", files=files, data={"name": name}, headers=who.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_listing(
    client: TestClient, alice: TenantKey, bob: TenantKey, session: Session, storage: LocalStorage
) -> None:
    mine = upload_checkpoint(client, alice)
    theirs = upload_checkpoint(client, bob)
    run = make_run(session, alice.tenant, name="done", status=RunStatus.SUCCEEDED)
    session.add(
        RunCheckpoint(
            run_id=run.id,
            step=100,
            size_bytes=1,
            sha256="0" * 64,
            storage_key=f"runs/{run.id}/checkpoint-100",
        )
    )
    make_run(session, alice.tenant, status=RunStatus.RUNNING)
    session.commit()

    data = client.get("/v1/models", headers=alice.headers).json()["data"]
    by_id = {model["id"]: model for model in data}
    builtin = by_id[MINILM]
    assert builtin["kind"] == "builtin" and builtin["available"]  # `make test` installs the minilm extra
    assert builtin["has_pretraining_heads"] is False
    assert builtin["parameters"] == 22_713_728
    assert builtin["config"]["hidden_size"] == 384
    assert by_id["hf:<repo_id>"]["kind"] == "hf" and by_id["hf:<repo_id>"]["available"] is True
    assert by_id[f"checkpoint:{mine}"]["name"] == "mine"
    assert by_id[f"checkpoint:{mine}"]["has_pretraining_heads"] is True
    assert f"checkpoint:{theirs}" not in by_id
    assert by_id[f"run:{run.id}"]["steps"] == [100]
    assert [m["kind"] for m in data] == ["builtin", "hf", "checkpoint", "run"]


def test_hub_is_unavailable_offline(client: TestClient, alice: TenantKey, settings: Settings) -> None:
    settings.hf_hub_offline = True
    data = client.get("/v1/models", headers=alice.headers).json()["data"]
    assert next(m for m in data if m["kind"] == "hf")["available"] is False


def test_resolve(
    client: TestClient,
    alice: TenantKey,
    bob: TenantKey,
    session: Session,
    settings: Settings,
    storage: LocalStorage,
) -> None:
    def resolve(spec: str) -> ResolvedBaseModel:
        return resolve_base_model(session, alice.tenant, spec, settings=settings, storage=storage)

    builtin = resolve(MINILM)  # `make test` installs the minilm extra
    assert builtin.kind == "builtin" and (Path(builtin.source) / "config.json").is_file()

    hub = resolve(" hf:google-bert/bert-base-uncased ")
    assert (hub.kind, hub.source, str(hub.spec)) == (
        "hf",
        "google-bert/bert-base-uncased",
        "hf:google-bert/bert-base-uncased",
    )

    checkpoint_id = upload_checkpoint(client, alice)
    resolved = resolve(f"checkpoint:{checkpoint_id}")
    assert resolved.kind == "checkpoint" and resolved.storage_key == f"checkpoints/{checkpoint_id}"
    assert resolved.local_path is not None and (resolved.local_path / "config.json").is_file()

    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    (storage.root / "runs" / run.id / "model").mkdir(parents=True)
    (storage.root / "runs" / run.id / "checkpoint-5").mkdir(parents=True)
    session.add(
        RunCheckpoint(
            run_id=run.id, step=5, size_bytes=1, sha256="0" * 64, storage_key=f"runs/{run.id}/checkpoint-5"
        )
    )
    session.commit()
    final = resolve(f"run:{run.id}")
    assert (final.kind, final.storage_key, final.spec.step) == ("run", f"runs/{run.id}/model", None)
    step = resolve(f"run:{run.id}@5")
    assert (step.storage_key, step.spec.step, str(step.spec)) == (
        f"runs/{run.id}/checkpoint-5",
        5,
        f"run:{run.id}@5",
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bert-base-uncased", "unknown base model"),
        ("hf:not a repo", "not a Hugging Face repository id"),
        ("checkpoint:ckpt_missing", "no checkpoint"),
        ("run:run_missing", "no run"),
        ("run:run_x@abc", "not a valid spec"),
        ("s3:bucket/model", "unknown base model"),
    ],
)
def test_resolve_errors_name_base_model(
    session: Session, alice: TenantKey, settings: Settings, storage: LocalStorage, spec: str, expected: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        resolve_base_model(session, alice.tenant, spec, settings=settings, storage=storage)
    assert info.value.param == "base_model"
    assert expected in info.value.message


def test_resolve_refuses_other_tenants_and_unfinished_runs(
    client: TestClient,
    alice: TenantKey,
    bob: TenantKey,
    session: Session,
    settings: Settings,
    storage: LocalStorage,
) -> None:
    theirs = upload_checkpoint(client, bob)
    running = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    bobs_run = make_run(session, bob.tenant, status=RunStatus.SUCCEEDED)
    cases = {
        f"checkpoint:{theirs}": "no checkpoint",
        f"run:{bobs_run.id}": "no run",
        f"run:{running.id}": "only a succeeded run",
        f"run:{running.id}@3": "no kept checkpoint at step 3",
    }
    for spec, expected in cases.items():
        with pytest.raises(ValidationFailed, match=expected):
            resolve_base_model(session, alice.tenant, spec, settings=settings, storage=storage)
    settings.hf_hub_offline = True
    with pytest.raises(ValidationFailed, match="HF_HUB_OFFLINE"):
        resolve_base_model(session, alice.tenant, "hf:org/model", settings=settings, storage=storage)
