"""Downloads of a run's checkpoints and final model: deterministic archives streamed as they are written,
served with ETag, Range, conditional requests and (once known) their sha256."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import (
    TenantKey,
    add_checkpoint_row,
    assert_error,
    fake_bert_files,
    make_run,
    write_directory,
)

CREATED_AT = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


TRAINING_STATE = {
    "optimizer.pt": os.urandom(3000),
    "scheduler.pt": b"scheduler",
    "rng_state.pth": b"rng",
    "rng_state_1.pth": b"rng1",
    "trainer_state.json": b'{"global_step": 100}',
}


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
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        return {info.name: info for info in tar.getmembers()}


def download(client: TestClient, who: TenantKey, url: str, **headers: str) -> tuple[bytes, dict[str, str]]:
    response = client.get(url, headers={**who.headers, **headers})
    assert response.status_code == 200, response.text
    return response.content, dict(response.headers)


def stored_archives(storage: LocalStorage, run: Run) -> list[str]:
    """What the run's archives folder holds (only the digests of archives already sent whole)."""
    folder = storage.local_path(f"runs/{run.id}/archives")
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_checkpoint_download_leaves_out_the_training_state(
    client: TestClient, alice: TenantKey, trained: Run
) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    body, headers = download(client, alice, url)
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "application/x-tar"
    assert headers["accept-ranges"] == "bytes"
    root = f"{trained.id}-checkpoint-100"
    assert headers["content-disposition"] == f'attachment; filename="{root}.tar"'
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
    # The digest needs every byte: the first complete download computes it, the next ones carry it.
    sha256 = hashlib.sha256(body).hexdigest()
    assert "x-content-sha256" not in headers
    again, headers_again = download(client, alice, url)
    assert again == body and headers_again["x-content-sha256"] == sha256
    assert headers_again["etag"] == headers["etag"]

    full, full_headers = download(client, alice, f"{url}?include_optimizer=true")
    names = {name.split("/", 1)[-1] for name in members(full)}
    assert set(TRAINING_STATE) <= names
    assert "with-training-state" in full_headers["content-disposition"]
    assert full_headers["etag"] != headers["etag"]
    with tarfile.open(fileobj=io.BytesIO(full), mode="r:") as tar:
        extracted = tar.extractfile(f"{root}/optimizer.pt")
        assert extracted is not None and extracted.read() == TRAINING_STATE["optimizer.pt"]


def test_model_download_and_only_for_succeeded_runs(
    client: TestClient, alice: TenantKey, trained: Run, session: Session
) -> None:
    body, _ = download(client, alice, f"/v1/runs/{trained.id}/model")
    root = f"{trained.id}-model"
    assert {f"{root}/config.json", f"{root}/model.safetensors", f"{root}/bertpt_manifest.json"} <= set(
        members(body)
    )
    head = client.head(f"/v1/runs/{trained.id}/model", headers=alice.headers)
    assert head.headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()
    for status in (RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED):
        other = make_run(session, alice.tenant, status=status)
        assert_error(client.get(f"/v1/runs/{other.id}/model", headers=alice.headers), 409, "conflict")


def test_an_archive_is_sent_while_it_is_written_not_built_first(
    client: TestClient, alice: TenantKey, trained: Run, storage: LocalStorage
) -> None:
    """The first bytes leave before the last file is read (nothing is built or stored ahead), so the time
    to the first byte does not grow with the checkpoint."""
    url = f"/v1/runs/{trained.id}/checkpoints/100/download?include_optimizer=true"
    last_file = storage.local_path(f"runs/{trained.id}/checkpoints/checkpoint-100/vocab.txt")
    old = last_file.read_bytes()
    new = old.upper()  # the same size: the layout planned before the first byte still holds
    with client.stream("GET", url, headers=alice.headers) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)
        size = int(response.headers["content-length"])
        assert 0 < len(first) < size
        assert stored_archives(storage, trained) == []  # no archive in storage: it is being written
        last_file.write_bytes(new)  # the last member, written after the first bytes left
        body = first + b"".join(chunks)
    assert len(body) == size
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        extracted = tar.extractfile(f"{trained.id}-checkpoint-100/vocab.txt")
        assert extracted is not None and extracted.read() == new != old
    # Once sent whole, only its digest is kept.
    (digest,) = stored_archives(storage, trained)
    assert digest.endswith("-with-training-state.tar.sha256")


def test_a_checkpoint_rotated_away_during_its_download_is_sent_whole(
    client: TestClient, alice: TenantKey, trained: Run, storage: LocalStorage
) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    expected, _ = download(client, alice, url)
    with client.stream("GET", url, headers=alice.headers) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        storage.delete(f"runs/{trained.id}/checkpoints/checkpoint-100")  # the run kept a newer one
        body = first + b"".join(chunks)
    assert body == expected
    assert_error(client.get(url, headers=alice.headers), 409, "conflict")  # the next one is refused


def test_archives_are_deterministic_and_what_tarfile_writes(
    client: TestClient, alice: TenantKey, trained: Run, storage: LocalStorage
) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    body, headers = download(client, alice, url)
    assert download(client, alice, url)[0] == body
    for path in storage.local_path(f"runs/{trained.id}/archives").iterdir():  # the kept digest
        path.unlink()
    assert download(client, alice, url) == (body, headers)

    # The same bytes as tarfile's for these members (a plain POSIX pax tar, readable anywhere).
    directory = storage.local_path(f"runs/{trained.id}/checkpoints/checkpoint-100")
    expected = io.BytesIO()
    with tarfile.TarFile(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for info in members(body).values():
            name = info.name.split("/", 1)[1] if "/" in info.name else ""
            if info.isdir():
                tar.addfile(info)
            else:
                with open(directory / name, "rb") as source:
                    tar.addfile(info, source)
    assert body == expected.getvalue()

    # A directory written anew (a resumed run saving the step again) is another archive.
    config = directory / "config.json"
    config.write_bytes(config.read_bytes().replace(b'"vocab_size": 10', b'"vocab_size": 10 '))
    changed, changed_headers = download(client, alice, url)
    assert changed != body and changed_headers["etag"] != headers["etag"]


def test_range_requests(client: TestClient, alice: TenantKey, trained: Run) -> None:
    url = f"/v1/runs/{trained.id}/checkpoints/100/download"
    # Resuming works from the first, interrupted, download on: its ETag is known before its bytes.
    first = client.get(url, headers={**alice.headers, "Range": "bytes=0-99"})
    assert first.status_code == 206
    etag = first.headers["etag"]
    body, headers = download(client, alice, url)
    size = len(body)
    assert headers["etag"] == etag
    assert first.content == body[:100] and first.headers["content-length"] == "100"
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.headers["content-type"] == "application/x-tar"

    tail = client.get(url, headers={**alice.headers, "Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == body[-50:]
    assert tail.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"
    assert tail.headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()
    rest = client.get(url, headers={**alice.headers, "Range": f"bytes={size - 10}-"})
    assert rest.status_code == 206 and rest.content == body[-10:]
    # A range across members: a file's end, its padding, the next header.
    middle = client.get(url, headers={**alice.headers, "Range": "bytes=700-2900"})
    assert middle.status_code == 206 and middle.content == body[700:2901]

    outside = client.get(url, headers={**alice.headers, "Range": f"bytes={size}-{size + 10}"})
    assert_error(outside, 416, "range_not_satisfiable", "Range")
    assert outside.headers["content-range"] == f"bytes */{size}"
    assert_error(
        client.get(url, headers={**alice.headers, "Range": "lines=1-2"}), 400, "invalid_request", "Range"
    )

    # If-Range with the current ETag resumes; with a stale one the whole file comes back.
    resumed = client.get(url, headers={**alice.headers, "Range": "bytes=100-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == body[100:]
    stale = client.get(url, headers={**alice.headers, "Range": "bytes=100-", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == body

    # Several ranges: multipart/byteranges.
    both = client.get(url, headers={**alice.headers, "Range": "bytes=0-9,-10"})
    assert both.status_code == 206 and both.headers["content-length"] == str(len(both.content))
    boundary = both.headers["content-type"].removeprefix("multipart/byteranges; boundary=")
    assert both.content == (
        f"--{boundary}\r\nContent-Type: application/x-tar\r\nContent-Range: bytes 0-9/{size}\r\n\r\n".encode()
        + body[:10]
        + f"\r\n--{boundary}\r\nContent-Type: application/x-tar\r\n".encode()
        + f"Content-Range: bytes {size - 10}-{size - 1}/{size}\r\n\r\n".encode()
        + body[-10:]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    # Many small ranges are ignored (RFC 9110 allows it): the whole archive comes back.
    many = ",".join(f"{i}-{i}" for i in range(0, 66, 2))
    assert client.get(url, headers={**alice.headers, "Range": f"bytes={many}"}).content == body


def test_conditional_and_head_requests(client: TestClient, alice: TenantKey, trained: Run) -> None:
    url = f"/v1/runs/{trained.id}/model"
    head = client.head(url, headers=alice.headers)
    assert head.status_code == 200 and head.content == b""
    body, headers = download(client, alice, url)
    assert head.headers["content-length"] == str(len(body)) and head.headers["etag"] == headers["etag"]
    not_modified = client.get(url, headers={**alice.headers, "If-None-Match": headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == headers["etag"]
    assert client.get(url, headers={**alice.headers, "If-None-Match": '"other"'}).status_code == 200
    ranged_head = client.head(url, headers={**alice.headers, "Range": "bytes=0-9"})
    assert ranged_head.status_code == 206 and ranged_head.headers["content-length"] == "10"


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
