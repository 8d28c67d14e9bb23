"""Checkpoint uploads (POST /v1/checkpoints): safe extraction, validation without torch, listing, deletion."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Checkpoint
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import (
    TenantKey,
    assert_error,
    directory_files,
    fake_bert_files,
    make_run,
    tar_gz,
    with_one_bad_weight,
    zip_bytes,
)


def upload(
    client: TestClient, who: TenantKey, content: bytes, filename: str = "model.tar.gz", **data: str
) -> Any:
    return client.post(
        "/v1/checkpoints", files={"file": (filename, content)}, data=data or None, headers=who.headers
    )


def nothing_left(storage: LocalStorage, session: Session, owner: TenantKey) -> bool:
    """No file in storage and no checkpoint row of ``owner`` (the database is shared by the session)."""
    files = [p for p in storage.root.rglob("*") if p.is_file()]
    rows = session.scalar(select(func.count()).where(Checkpoint.tenant_id == owner.tenant.id))
    return not files and storage.temporary_entries() == [] and rows == 0


@pytest.mark.parametrize("heads", [True, False])
@pytest.mark.parametrize(("filename", "folder"), [("tiny.tar.gz", None), ("tiny.zip", "tiny-bert")])
def test_upload_a_real_checkpoint(
    client: TestClient,
    alice: TenantKey,
    storage: LocalStorage,
    tiny_bert_dir: Path,
    tiny_encoder_dir: Path,
    heads: bool,
    filename: str,
    folder: str | None,
) -> None:
    directory = tiny_bert_dir if heads else tiny_encoder_dir
    parameters = sum(t.numel() for t in load_file(directory / "model.safetensors").values())
    files = directory_files(directory, folder=folder)
    archive = zip_bytes(files) if filename.endswith(".zip") else tar_gz(files)
    response = upload(client, alice, archive, filename)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ckpt_")
    assert body["name"] == "tiny"
    assert body["has_pretraining_heads"] is heads
    assert body["parameters"] == parameters
    assert body["config"]["model_type"] == "bert"
    assert (body["config"]["hidden_size"], body["config"]["layers"], body["config"]["heads"]) == (32, 2, 2)
    assert body["sha256"] == hashlib.sha256(archive).hexdigest()
    stored = storage.local_path(f"checkpoints/{body['id']}")
    assert sorted(p.name for p in stored.iterdir()) == sorted(
        p.name for p in directory.iterdir() if p.is_file()
    )
    assert (stored / "model.safetensors").read_bytes() == (directory / "model.safetensors").read_bytes()
    assert body["bytes"] == sum(p.stat().st_size for p in stored.iterdir())
    assert storage.temporary_entries() == []
    # The upload answers the checkpoint as GET does, and what the upload left out (nothing here).
    assert body.pop("warnings") == []
    assert client.get(f"/v1/checkpoints/{body['id']}", headers=alice.headers).json() == body


def test_sharded_checkpoint(client: TestClient, alice: TenantKey) -> None:
    files = fake_bert_files()
    shard = files.pop("model.safetensors")
    files["model-00001-of-00001.safetensors"] = shard
    files["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {"bert.embeddings.word_embeddings.weight": "model-00001-of-00001.safetensors"}}
    ).encode()
    response = upload(client, alice, tar_gz(files), name="sharded")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "sharded"


def refused(client: TestClient, who: TenantKey, archive: bytes, filename: str = "model.tar.gz") -> str:
    return str(
        assert_error(upload(client, who, archive, filename), 422, "validation_error", "file")["message"]
    )


def test_path_traversal_is_refused(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    files = fake_bert_files() | {"../evil.json": b"{}"}
    assert "'..'" in refused(client, alice, tar_gz(files))
    assert "'..'" in refused(
        client, alice, zip_bytes(fake_bert_files() | {"a/../../evil.json": b"{}"}), "m.zip"
    )
    assert "absolute" in refused(client, alice, tar_gz(fake_bert_files() | {"/etc/evil.json": b"{}"}))
    assert not (storage.root.parent / "evil.json").exists()
    assert nothing_left(storage, session, alice)


def test_links_and_devices_are_refused(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    link = tarfile.TarInfo("vocab.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = fake_bert_files()
    del files["vocab.txt"]
    assert "symbolic link" in refused(client, alice, tar_gz(files, extra=[link]))
    hard = tarfile.TarInfo("vocab.txt")
    hard.type, hard.linkname = tarfile.LNKTYPE, "config.json"
    assert "hard link" in refused(client, alice, tar_gz(files, extra=[hard]))
    device = tarfile.TarInfo("vocab.txt")
    device.type = tarfile.CHRTYPE
    assert "device" in refused(client, alice, tar_gz(files, extra=[device]))
    assert "symbolic link" in refused(
        client, alice, zip_bytes(files, symlinks={"vocab.txt": "/etc/passwd"}), "m.zip"
    )
    assert nothing_left(storage, session, alice)


def test_pickle_weights_are_refused_with_a_conversion_hint(client: TestClient, alice: TenantKey) -> None:
    files = fake_bert_files()
    del files["model.safetensors"]
    files["pytorch_model.bin"] = b"\x80\x04pickle"
    message = refused(client, alice, tar_gz(files))
    assert "pytorch_model.bin" in message and "safetensors" in message and "save_pretrained" in message
    assert "pickle" in refused(client, alice, tar_gz(fake_bert_files() | {"weights.pt": b"x"}))


def test_bertpts_own_files_upload_back(client: TestClient, alice: TenantKey, storage: LocalStorage) -> None:
    """A checkpoint downloaded with its training state: the manifest is kept as provenance, the training
    state (pickles among it) is left out, never extracted, and the answer says so."""
    state = {"optimizer.pt": b"\x80pickle", "rng_state.pth": b"\x80", "trainer_state.json": b"{}"}
    manifest = {"bertpt_checkpoint.json": b'{"step": 3}'}
    files = {
        f"run_x-checkpoint-3/{name}": content
        for name, content in (fake_bert_files() | manifest | state).items()
    }
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:  # a plain .tar, as downloads are
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    response = upload(client, alice, plain.getvalue(), "run_x-checkpoint-3-with-training-state.tar")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "run_x-checkpoint-3-with-training-state"
    (warning,) = body["warnings"]
    assert warning["code"] == "training_state_left_out"
    assert all(name in warning["message"] for name in state)
    stored = storage.local_path(f"checkpoints/{body['id']}")
    assert sorted(p.name for p in stored.iterdir()) == sorted(fake_bert_files() | manifest)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"config.json": json.dumps({"model_type": "gpt2", "vocab_size": 10}).encode()}, "model_type 'gpt2'"),
        ({"config.json": b"not json"}, "config.json is unreadable"),
        ({"model.safetensors": b"\x00\x00"}, "too short"),
        ({"model.safetensors": b"\xff" * 16}, "bad header length"),
        ({"modules.json": b"[]"}, "unexpected file 'modules.json'"),
        ({"nested/deeper/config.json": b"{}"}, "nested"),
    ],
)
def test_invalid_checkpoints_are_refused(
    client: TestClient, alice: TenantKey, change: dict[str, bytes], expected: str
) -> None:
    assert expected in refused(client, alice, tar_gz(fake_bert_files() | change))


def test_missing_parts_are_refused(client: TestClient, alice: TenantKey) -> None:
    for missing, expected in [
        ("config.json", "no config.json"),
        ("model.safetensors", "no model.safetensors"),
        ("vocab.txt", "no tokenizer"),
    ]:
        files = fake_bert_files()
        del files[missing]
        assert expected in refused(client, alice, tar_gz(files))


def test_a_weight_that_is_not_finite_is_refused_naming_the_tensor(
    client: TestClient,
    alice: TenantKey,
    storage: LocalStorage,
    session: Session,
    tiny_bert_dir: Path,
    tmp_path: Path,
) -> None:
    broken = with_one_bad_weight(tiny_bert_dir, tmp_path / "diverged", "cls.predictions.transform.dense.bias")
    message = refused(client, alice, tar_gz(directory_files(broken)))
    assert "tensor cls.predictions.transform.dense.bias holds NaN values" in message
    assert nothing_left(storage, session, alice)


def test_vocab_size_must_match_the_embeddings(client: TestClient, alice: TenantKey) -> None:
    files = fake_bert_files(vocab_size=10)
    files["config.json"] = json.dumps({"model_type": "bert", "vocab_size": 11}).encode()
    assert "vocab_size=11" in refused(client, alice, tar_gz(files))


def test_archive_limits(
    client: TestClient, alice: TenantKey, settings: Settings, storage: LocalStorage, session: Session
) -> None:
    files = fake_bert_files()
    settings.max_checkpoint_members = 3
    assert "more than 3 members" in refused(client, alice, tar_gz(files))
    settings.max_checkpoint_members = 64
    settings.max_checkpoint_unpacked_bytes = 100
    response = upload(client, alice, tar_gz(files))
    assert (
        "MAX_CHECKPOINT_UNPACKED_BYTES" in assert_error(response, 413, "payload_too_large", "file")["message"]
    )
    settings.max_upload_bytes = 100
    assert_error(upload(client, alice, tar_gz(files)), 413, "payload_too_large", "file")
    assert nothing_left(storage, session, alice)


def test_an_archive_bomb_is_refused_naming_the_file_and_the_cap(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    files = fake_bert_files() | {"__MACOSX/._model.safetensors": bytes(16 << 20)}  # skipped, but inflated
    response = upload(client, alice, tar_gz(files), "bomb.tar.gz")
    error = assert_error(response, 413, "payload_too_large", "file")
    assert "'bomb.tar.gz'" in error["message"] and "(MAX_COMPRESSION_RATIO)" in error["message"]
    assert nothing_left(storage, session, alice)


def test_mixed_roots_and_corrupt_archives_are_refused(client: TestClient, alice: TenantKey) -> None:
    files = directory_files_from(fake_bert_files(), folder="a") | {"b/README.md": b"hi"}
    assert "one folder" in refused(client, alice, tar_gz(files))
    assert "corrupt" in refused(client, alice, tar_gz(fake_bert_files())[:200])
    assert "not a zip" in refused(client, alice, tar_gz(fake_bert_files()), "model.zip")
    assert "not a gzip" in refused(client, alice, zip_bytes(fake_bert_files()), "model.tar.gz")
    assert ".tar.gz, .tar or .zip" in refused(client, alice, b"x", "model.rar")
    assert "corrupt" in refused(client, alice, b"not a tar archive at all", "model.tar")


def directory_files_from(files: dict[str, bytes], *, folder: str) -> dict[str, bytes]:
    return {f"{folder}/{name}": content for name, content in files.items()}


def test_macos_junk_is_skipped(client: TestClient, alice: TenantKey) -> None:
    files = fake_bert_files() | {"__MACOSX/._config.json": b"junk", ".DS_Store": b"junk"}
    assert upload(client, alice, zip_bytes(files), "m.zip").status_code == 201


def test_tenant_isolation_and_pagination(client: TestClient, alice: TenantKey, bob: TenantKey) -> None:
    archive = tar_gz(fake_bert_files())
    ids = [upload(client, alice, archive, name=f"c{i}").json()["id"] for i in range(3)]
    bobs = upload(client, bob, archive).json()["id"]
    first = client.get("/v1/checkpoints?limit=2", headers=alice.headers).json()
    second = client.get(f"/v1/checkpoints?limit=2&after={first['next_cursor']}", headers=alice.headers).json()
    assert [c["id"] for c in first["data"] + second["data"]] == list(reversed(ids))
    assert second["next_cursor"] is None
    assert_error(client.get(f"/v1/checkpoints/{bobs}", headers=alice.headers), 404, "not_found")
    assert_error(client.delete(f"/v1/checkpoints/{bobs}", headers=alice.headers), 404, "not_found")
    assert client.get(f"/v1/checkpoints/{bobs}", headers=bob.headers).status_code == 200


def test_delete(client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session) -> None:
    checkpoint_id = upload(client, alice, tar_gz(fake_bert_files())).json()["id"]
    run = make_run(session, alice.tenant, base_model=f"checkpoint:{checkpoint_id}", status=RunStatus.RUNNING)
    error = assert_error(
        client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=alice.headers), 409, "conflict"
    )
    assert run.id in error["message"]
    run.status = RunStatus.FAILED
    session.commit()
    assert client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=alice.headers).status_code == 204
    assert not storage.exists(f"checkpoints/{checkpoint_id}")
    assert_error(client.get(f"/v1/checkpoints/{checkpoint_id}", headers=alice.headers), 404, "not_found")
