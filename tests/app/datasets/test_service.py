"""Labelled dataset upload (validated, deduplicated, size-capped), listing, retrieval and deletion."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets.service import content_sha256
from app.models import Dataset
from app.storage import LocalStorage
from tests.support import TenantKey, assert_error

TSV = b"id\ttext\tlabel\n" + b"".join(
    f"{i}\tsentence number {i}\t{'pos' if i % 2 else 'neg'}\n".encode() for i in range(10)
)
CSV_PAIRS = b"text,text_pair,label\n" + b"".join(
    f'"premise {i}, with a comma","hypothesis {i}",{["yes", "no", "maybe"][i % 3]}\n'.encode()
    for i in range(12)
)
JSONL = b"".join(
    json.dumps({"text": f"review {i}", "label": i % 2}).encode() + b"\n" for i in range(8)
)  # fmt: skip


def upload(
    client: TestClient,
    who: TenantKey,
    content: bytes = TSV,
    filename: str = "train.tsv",
    *,
    test: tuple[str, bytes] | None = None,
    name: str | None = None,
) -> Any:
    files = {"file": (filename, content)} | ({"test_file": test} if test else {})
    data = {"name": name} if name is not None else None
    return client.post("/v1/datasets", files=files, data=data, headers=who.headers)


def stored_files(storage: LocalStorage) -> list[str]:
    return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file())


def dataset_count(session: Session, *owners: TenantKey) -> int:
    tenant_ids = [owner.tenant.id for owner in owners]
    return session.scalar(select(func.count()).where(Dataset.tenant_id.in_(tenant_ids))) or 0


def assert_nothing_stored(storage: LocalStorage, session: Session, who: TenantKey) -> None:
    assert stored_files(storage) == [] and storage.temporary_entries() == []
    assert dataset_count(session, who) == 0


def test_tsv_upload_reports_labels_and_counts(
    client: TestClient, alice: TenantKey, storage: LocalStorage
) -> None:
    response = upload(client, alice)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ds_")
    assert response.headers["Location"] == f"/v1/datasets/{body['id']}"
    assert body | {"id": None, "created_at": None} == {
        "id": None,
        "name": "train",
        "filename": "train.tsv",
        "format": "tsv",
        "bytes": len(TSV),
        "sha256": hashlib.sha256(TSV).hexdigest(),
        "examples": 10,
        "labels": [
            {"label": "neg", "examples": 5, "test_examples": None},
            {"label": "pos", "examples": 5, "test_examples": None},
        ],
        "has_text_pair": False,
        "has_test_file": False,
        "test_filename": None,
        "test_format": None,
        "test_bytes": None,
        "test_examples": None,
        "ignored_columns": ["id"],
        "created_at": None,
    }
    assert stored_files(storage) == [f"datasets/{body['id']}/train.tsv"]
    assert (storage.root / "datasets" / body["id"] / "train.tsv").read_bytes() == TSV
    assert storage.temporary_entries() == []
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice.headers).json() == body


def test_csv_pairs_with_a_jsonl_test_file(
    client: TestClient, alice: TenantKey, storage: LocalStorage
) -> None:
    test = b"".join(
        json.dumps({"text": f"p{i}", "text_pair": f"h{i}", "label": label}).encode() + b"\n"
        for i, label in enumerate(["yes", "no", "yes"])
    )
    response = upload(client, alice, CSV_PAIRS, "nli.csv", test=("nli-test.jsonl", test), name=" NLI ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "NLI" and body["format"] == "csv" and body["has_text_pair"]
    assert body["has_test_file"] and body["test_filename"] == "nli-test.jsonl"
    assert (body["test_format"], body["test_bytes"], body["test_examples"]) == ("jsonl", len(test), 3)
    assert body["labels"] == [
        {"label": "maybe", "examples": 4, "test_examples": 0},
        {"label": "no", "examples": 4, "test_examples": 1},
        {"label": "yes", "examples": 4, "test_examples": 2},
    ]
    sha_train, sha_test = hashlib.sha256(CSV_PAIRS).hexdigest(), hashlib.sha256(test).hexdigest()
    assert body["sha256"] == content_sha256(sha_train, sha_test) != sha_train
    assert stored_files(storage) == [f"datasets/{body['id']}/test.jsonl", f"datasets/{body['id']}/train.csv"]


def test_jsonl_labels_are_strings(client: TestClient, alice: TenantKey) -> None:
    body = upload(client, alice, JSONL, "reviews.jsonl").json()
    assert [label["label"] for label in body["labels"]] == ["0", "1"]


def test_the_test_file_may_come_first(client: TestClient, alice: TenantKey) -> None:
    boundary = "b0undary"

    def part(field: str, filename: str, content: bytes) -> bytes:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n\r\n'
        )
        return head.encode() + content + b"\r\n"

    body = (
        part("test_file", "t.tsv", b"text\tlabel\nx\tpos\n")
        + part("file", "d.tsv", TSV)
        + f"--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/v1/datasets",
        content=body,
        headers={**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert (response.json()["test_examples"], response.json()["examples"]) == (1, 10)


def test_same_content_twice_returns_the_existing_dataset(
    client: TestClient, alice: TenantKey, bob: TenantKey, storage: LocalStorage, session: Session
) -> None:
    first = upload(client, alice)
    again = upload(client, alice, filename="copy.tsv", name="other name")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert again.headers["Location"] == f"/v1/datasets/{first.json()['id']}"
    # with a test file it is other content; another tenant's identical file is its own dataset
    assert upload(client, alice, test=("t.tsv", b"text\tlabel\nx\tpos\n")).status_code == 201
    theirs = upload(client, bob)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert dataset_count(session, alice, bob) == 3
    assert len(stored_files(storage)) == 4 and storage.temporary_entries() == []


@pytest.mark.parametrize(
    ("files", "param", "message"),
    [
        ({"file": ("d.tsv", TSV + b"99\toops\t\n")}, "file", "d.tsv line 12: field 'label' is empty"),
        ({"file": ("d.tsv", b"text\tlabels\na\tb\n")}, "file", "d.tsv line 1: field 'label' is missing"),
        ({"file": ("d.tsv", TSV.replace(b"\tpos", b"\tneg"))}, "file", "has 1 distinct label"),
        ({"file": ("d.xlsx", TSV)}, "file", ".tsv, .csv or .jsonl"),
        ({"test_file": ("t.tsv", TSV)}, "file", "no training file"),
        ({"file": ("d.tsv", TSV), "test_file": ("t.txt", TSV)}, "test_file", "t.txt"),
        (
            {"file": ("d.tsv", TSV), "test_file": ("t.tsv", b"text\tlabel\na\tpos\nb\tmeh\n")},
            "test_file",
            "t.tsv line 3: field 'label' is 'meh', a label that the training file does not have",
        ),
        (
            {"file": ("d.tsv", TSV), "test_file": ("t.csv", b"text,text_pair,label\na,b,pos\n")},
            "test_file",
            "text_pair column",
        ),
    ],
)
def test_invalid_uploads_are_422_and_leave_nothing(
    client: TestClient,
    alice: TenantKey,
    storage: LocalStorage,
    session: Session,
    files: dict[str, tuple[str, bytes]],
    param: str,
    message: str,
) -> None:
    response = client.post("/v1/datasets", files=files, headers=alice.headers)
    assert message in assert_error(response, 422, "validation_error", param)["message"]
    assert_nothing_stored(storage, session, alice)


def test_a_name_too_long_is_refused(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    assert_error(upload(client, alice, name="n" * 201), 422, "validation_error", "name")
    assert_nothing_stored(storage, session, alice)


def test_unexpected_and_repeated_file_parts_are_400(client: TestClient, alice: TenantKey) -> None:
    response = client.post(
        "/v1/datasets", files={"file": ("d.tsv", TSV), "extra": ("e.tsv", TSV)}, headers=alice.headers
    )
    assert "'file' or 'test_file'" in assert_error(response, 400, "invalid_request")["message"]
    response = client.post(
        "/v1/datasets", files=[("file", ("d.tsv", TSV)), ("file", ("e.tsv", TSV))], headers=alice.headers
    )
    assert "more than one 'file' part" in assert_error(response, 400, "invalid_request")["message"]


def test_the_size_cap_counts_both_files(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session, settings: Settings
) -> None:
    settings.max_dataset_bytes = len(TSV) + 10
    error = assert_error(upload(client, alice, test=("t.tsv", TSV)), 413, "payload_too_large", "test_file")
    assert f"{len(TSV) + 10:,} bytes (MAX_DATASET_BYTES)" in error["message"]
    assert_nothing_stored(storage, session, alice)
    assert upload(client, alice).status_code == 201


def test_list_paginates_newest_first_and_only_own(
    client: TestClient, alice: TenantKey, bob: TenantKey
) -> None:
    ids = [upload(client, alice, TSV + f"{i}\textra\tpos\n".encode()).json()["id"] for i in range(3)]
    upload(client, bob)
    first = client.get("/v1/datasets", params={"limit": 2}, headers=alice.headers).json()
    second = client.get("/v1/datasets", params={"after": first["next_cursor"]}, headers=alice.headers).json()
    assert [d["id"] for d in first["data"] + second["data"]] == list(reversed(ids))
    assert second["next_cursor"] is None
    bobs = [d["id"] for d in client.get("/v1/datasets", headers=bob.headers).json()["data"]]
    assert len(bobs) == 1 and bobs[0] not in ids


def test_another_tenants_dataset_is_not_found(
    client: TestClient, alice: TenantKey, bob: TenantKey, storage: LocalStorage
) -> None:
    dataset_id = upload(client, alice).json()["id"]
    missing = client.get("/v1/datasets/ds_doesnotexist", headers=bob.headers)
    theirs = client.get(f"/v1/datasets/{dataset_id}", headers=bob.headers)
    assert_error(theirs, 404, "not_found")
    assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "ds_doesnotexist", dataset_id
    )
    assert_error(client.delete(f"/v1/datasets/{dataset_id}", headers=bob.headers), 404, "not_found")
    assert client.get(f"/v1/datasets/{dataset_id}", headers=alice.headers).status_code == 200
    assert len(stored_files(storage)) == 1


def test_delete_removes_row_and_files(client: TestClient, alice: TenantKey, storage: LocalStorage) -> None:
    dataset_id = upload(client, alice, test=("t.tsv", b"text\tlabel\nx\tpos\n")).json()["id"]
    response = client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers)
    assert response.status_code == 204 and response.content == b""
    assert stored_files(storage) == [] and not (storage.root / "datasets" / dataset_id).exists()
    assert_error(client.get(f"/v1/datasets/{dataset_id}", headers=alice.headers), 404, "not_found")


def test_delete_is_refused_while_the_dataset_is_in_use(
    client: TestClient, alice: TenantKey, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id = upload(client, alice).json()["id"]
    monkeypatch.setattr(
        "app.datasets.repository.dataset_in_use", lambda _session, _id: "evaluation eval_1 is running"
    )
    error = assert_error(client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers), 409, "conflict")
    assert "evaluation eval_1 is running" in error["message"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=alice.headers).status_code == 200
    assert len(stored_files(storage)) == 1
