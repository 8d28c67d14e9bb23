"""Downloads of a run's checkpoints and final model: deterministic cached archives served with sha256,
ETag, Range and conditional requests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import TenantKey, add_checkpoint_row, assert_error, fake_bert_files, make_run

CREATED_AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


TRAINING_STATE = {
    "optimizer.pt": os.urandom(3000),
    "scheduler.pt": b"scheduler",
    "rng_state.pth": b"rng",
    "rng_state_1.pth": b"rng1",
    "trainer_state.json": b'{"global_step": 100}',
}


def write_directory(storage: LocalStorage, key: str, files: dict[str, bytes]) -> Path:
    directory = storage.local_path(key)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory


@pytest.fixture
def trained(session: Session, alice: TenantKey, storage: LocalStorage) -> Run:
    """A succeeded run with its final model and a kept checkpoint at step 100, as the worker stores them."""
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED, output_storage_key=None)
    weights = {**fake_bert_files(), "model.safetensors": os.urandom(20_000)}  # incompressible, like weights
    manifest = json.dumps({"created_at": CREATED_AT.isoformat(), "step": 100}).encode()
    write_directory(storage, f"runs/{run.id}/model", {**weights, "bertpt_manifest.json": manifest})
    key = f"runs/{run.id}/checkpoints/checkpoint-100"
    write_directory(storage, key, {**weights, **TRAINING_STATE, "bertpt_checkpoint.json": manifest})
    add_checkpoint_row(session, run, 100, key=key)
    return run


def members(body: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {info.name: info for info in tar.getmembers()}


def download(client: TestClient, who: TenantKey, url: str, **headers: str) -> tuple[bytes, dict[str, str]]:
    response = client.get(url, headers={**who.headers, **headers})
    assert response.status_code == 200, response.text
    return response.content, dict(response.headers)


def test_checkpoint_download_leaves_out_the_training_state(
    client: TestClient, alice: TenantKey, trained: Run
) -> None:
    body, headers = download(client, alice, f"/v1/runs/{trained.id}/checkpoints/100/download")
    sha256 = hashlib.sha256(body).hexdigest()
    assert headers["x-content-sha256"] == sha256
    assert headers["etag"] == f'"{sha256}"'
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "application/gzip"
    assert headers["accept-ranges"] == "bytes"
    root = f"{trained.id}-checkpoint-100"
    assert headers["content-disposition"] == f'attachment; filename="{root}.tar.gz"'
    infos = members(body)
    files = [
        "bertpt_checkpoint.json",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert sorted(infos) == [root, *(f"{root}/{name}" for name in files)]
    for info in infos.values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == int(CREATED_AT.timestamp())
    assert body[4:8] == int(CREATED_AT.timestamp()).to_bytes(4, "little")  # the gzip header's time

    full, full_headers = download(
        client, alice, f"/v1/runs/{trained.id}/checkpoints/100/download?include_optimizer=true"
    )
    names = {name.split("/", 1)[-1] for name in members(full)}
    assert set(TRAINING_STATE) <= names
    assert full_headers["x-content-sha256"] == hashlib.sha256(full).hexdigest() != sha256
    assert "with-training-state" in full_headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(full), mode="r:gz") as tar:
        extracted = tar.extractfile(f"{root}/optimizer.pt")
        assert extracted is not None and extracted.read() == TRAINING_STATE["optimizer.pt"]


def test_model_download_and_only_for_succeeded_runs(
    client: TestClient, alice: TenantKey, trained: Run, session: Session
) -> None:
    body, headers = download(client, alice, f"/v1/runs/{trained.id}/model")
    root = f"{trained.id}-model"
    assert {f"{root}/config.json", f"{root}/model.safetensors", f"{root}/bertpt_manifest.json"} <= set(
        members(body)
    )
    assert headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()
    for status in (RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED):
        other = make_run(session, alice.tenant, status=status)
        assert_error(client.get(f"/v1/runs/{other.id}/model", headers=alice.headers), 409, "conflict")


def test_archives_are_built_once_and_deterministically(
    client: TestClient, alice: TenantKey, trained: Run, storage: LocalStorage
) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    body, _ = download(client, alice, url)
    archives = sorted(storage.local_path(f"runs/{trained.id}/archives").iterdir())
    assert [path.suffixes[-2:] for path in archives] == [[".tar", ".gz"], [".gz", ".sha256"]]
    built = archives[0].stat().st_mtime_ns
    assert download(client, alice, url)[0] == body
    assert archives[0].stat().st_mtime_ns == built  # served from the cache

    for path in archives:  # built again from scratch: the same bytes
        path.unlink()
    assert download(client, alice, url)[0] == body

    # A directory written anew (a resumed run saving the step again) gets a new archive.
    config = storage.local_path(f"runs/{trained.id}/checkpoints/checkpoint-100/config.json")
    config.write_bytes(config.read_bytes().replace(b'"vocab_size": 10', b'"vocab_size": 10 '))
    changed, _ = download(client, alice, url)
    assert changed != body


def test_range_requests(client: TestClient, alice: TenantKey, trained: Run) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    body, _ = download(client, alice, url)
    size = len(body)

    first = client.get(url, headers={**alice.headers, "Range": "bytes=0-99"})
    assert first.status_code == 206
    assert first.content == body[:100] and first.headers["content-length"] == "100"
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()

    tail = client.get(url, headers={**alice.headers, "Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == body[-50:]
    assert tail.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"
    rest = client.get(url, headers={**alice.headers, "Range": f"bytes={size - 10}-"})
    assert rest.status_code == 206 and rest.content == body[-10:]

    outside = client.get(url, headers={**alice.headers, "Range": f"bytes={size}-{size + 10}"})
    assert_error(outside, 416, "range_not_satisfiable", "Range")
    assert outside.headers["content-range"] == f"bytes */{size}"
    assert_error(
        client.get(url, headers={**alice.headers, "Range": "lines=1-2"}), 400, "invalid_request", "Range"
    )

    # If-Range with the current ETag resumes; with a stale one the whole file comes back.
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    resumed = client.get(url, headers={**alice.headers, "Range": "bytes=100-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == body[100:]
    stale = client.get(url, headers={**alice.headers, "Range": "bytes=100-", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == body


def test_conditional_and_head_requests(client: TestClient, alice: TenantKey, trained: Run) -> None:
    url = f"/v1/runs/{trained.id}/model"
    body, headers = download(client, alice, url)
    not_modified = client.get(url, headers={**alice.headers, "If-None-Match": headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == headers["etag"]
    assert client.get(url, headers={**alice.headers, "If-None-Match": '"other"'}).status_code == 200
    head = client.head(url, headers=alice.headers)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(body)) and head.headers["etag"] == headers["etag"]


def test_missing_checkpoints_and_files(
    client: TestClient, alice: TenantKey, trained: Run, session: Session, storage: LocalStorage
) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints"
    listing = client.get(url, headers=alice.headers).json()
    (checkpoint,) = listing
    assert checkpoint == {
        "step": 100,
        "created_at": checkpoint["created_at"],
        "metrics": {"eval": {"loss": 2.5}},
        "size_bytes": 123,
        "sha256": "ab" * 32,
    }
    assert_error(client.get(f"{url}/7/download", headers=alice.headers), 404, "not_found", "step")
    add_checkpoint_row(session, trained, 50)  # a row whose files were rotated away
    assert_error(client.get(f"{url}/50/download", headers=alice.headers), 409, "conflict")
    storage.delete(f"runs/{trained.id}/model")
    assert_error(client.get(f"/v1/runs/{trained.id}/model", headers=alice.headers), 409, "conflict")
