"""Corpus upload (streamed, validated), listing, retrieval and deletion."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Corpus, Run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.uploads import CHUNK_SIZE
from tests.support import (
    TenantKey,
    assert_error,
    corpus_bytes,
    gzip_bomb,
    gzip_bytes,
    make_run,
    upload_corpus,
)
from worker.pretraining.corpus import CorpusScanner


def corpus_count(session: Session, *owners: TenantKey) -> int:
    """The corpora of these tenants (only the test's own rows: the database is shared by the session)."""
    tenant_ids = [owner.tenant.id for owner in owners]
    return session.scalar(select(func.count()).where(Corpus.tenant_id.in_(tenant_ids))) or 0


def stored_files(storage: LocalStorage) -> list[str]:
    return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file())


def test_upload_reports_statistics_and_warnings(
    client: TestClient, alice: TenantKey, storage: LocalStorage
) -> None:
    content = corpus_bytes(3, 3) + b"\nA lonely one-sentence document.\n"
    response = upload_corpus(client, alice, content, filename="bio.txt")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("corp_") and len(body["id"]) == 5 + 24
    assert response.headers["Location"] == f"/v1/corpora/{body['id']}"
    assert body["name"] == "bio" and body["filename"] == "bio.txt"
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (body["documents"], body["sentences"]) == (4, 10)
    assert body["stats"]["sentences_per_document"]["max"] == 3
    assert [w["code"] for w in body["warnings"]] == ["one_sentence_documents"]
    assert body["warnings"][0]["first_line"] == 13
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert stored_files(storage) == [f"corpora/{body['id']}/corpus.txt"]
    assert (storage.root / "corpora" / body["id"] / "corpus.txt").read_bytes() == content
    assert storage.temporary_entries() == []
    assert client.get(f"/v1/corpora/{body['id']}", headers=alice.headers).json() == body


def test_name_field_may_come_before_or_after_the_file(client: TestClient, alice: TenantKey) -> None:
    body = corpus_bytes(2, tag="a")
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\n'.encode()
        + body,
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nafter the file'.encode(),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    response = client.post(
        "/v1/corpora",
        content=b"".join(parts),
        headers={**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "after the file"
    response = upload_corpus(client, alice, corpus_bytes(2, tag="b"), name="  given name ")
    assert response.json()["name"] == "given name"


def test_same_content_twice_returns_the_existing_corpus(
    client: TestClient, alice: TenantKey, bob: TenantKey, storage: LocalStorage, session: Session
) -> None:
    content = corpus_bytes()
    first = upload_corpus(client, alice, content)
    assert first.status_code == 201
    again = upload_corpus(client, alice, content, filename="copy.txt", name="other name")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert storage.temporary_entries() == []
    assert len(stored_files(storage)) == 1
    # another tenant's identical file is its own corpus
    theirs = upload_corpus(client, bob, content)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]
    assert corpus_count(session, alice, bob) == 2


def test_upload_is_streamed_in_bounded_chunks(
    client: TestClient, alice: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service sees the file as it arrives, in chunks of about 1 MiB, never as one piece."""
    sizes: list[int] = []

    class RecordingScanner(CorpusScanner):
        def feed(self, chunk: bytes) -> None:
            sizes.append(len(chunk))
            super().feed(chunk)

    monkeypatch.setattr("app.corpora.service.CorpusScanner", RecordingScanner)
    content = corpus_bytes(25_000, 3)
    assert len(content) > 3 * CHUNK_SIZE
    assert upload_corpus(client, alice, content).status_code == 201
    assert sum(sizes) == len(content)
    assert len(sizes) >= 3 and max(sizes) < CHUNK_SIZE + (256 << 10)


def test_gzip_upload(client: TestClient, alice: TenantKey, storage: LocalStorage) -> None:
    text = corpus_bytes(4)
    content = gzip_bytes(text)
    response = upload_corpus(client, alice, content, filename="Corpus.TXT.GZ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Corpus" and body["documents"] == 4
    assert body["bytes"] == len(content) and body["sha256"] == hashlib.sha256(content).hexdigest()
    assert stored_files(storage) == [f"corpora/{body['id']}/corpus.txt.gz"]


def test_invalid_utf8_is_refused_with_its_line(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    content = corpus_bytes(2) + b"\nfine line\ncaf\xe9 au lait\n"
    response = upload_corpus(client, alice, content)
    error = assert_error(response, 422, "validation_error", "file")
    assert f"corpus.txt, line 10 (byte {content.index(0xE9)})" in error["message"]
    assert "UTF-8" in error["message"]
    assert stored_files(storage) == []
    assert corpus_count(session, alice) == 0


def test_nul_byte_is_refused(client: TestClient, alice: TenantKey, storage: LocalStorage) -> None:
    error = assert_error(
        upload_corpus(client, alice, b"one\ntwo\x00three\n\nfour\n"), 422, "validation_error", "file"
    )
    assert "line 2" in error["message"] and "NUL" in error["message"]
    assert stored_files(storage) == []


def test_a_single_document_is_accepted_with_a_warning(client: TestClient, alice: TenantKey) -> None:
    # A book or a manual trains MLM-only (nsp: false); the warning says so.
    response = upload_corpus(client, alice, b"a.\nb.\n")
    assert response.status_code == 201, response.text
    assert [w["code"] for w in response.json()["warnings"]] == ["single_document"]


def test_empty_files_and_files_without_text_are_refused(client: TestClient, alice: TenantKey) -> None:
    assert (
        "empty" in assert_error(upload_corpus(client, alice, b""), 422, "validation_error", "file")["message"]
    )
    error = assert_error(upload_corpus(client, alice, b"\x01\x02\n\n\x7f\n"), 422, "validation_error", "file")
    assert "no text" in error["message"]


def test_upload_reports_the_new_text_checks(client: TestClient, alice: TenantKey) -> None:
    content = (
        "Le cafe\u0301 de l'e\u0301te\u0301.\nUne phrase.\n\ufeff\nDeux.\nTrois.\n\n\x01\x02\n\x03\n"
    ).encode()
    body = upload_corpus(client, alice, content).json()
    assert [(w["code"], w["first_line"]) for w in body["warnings"]] == [
        ("documents_without_text", 7),
        ("invisible_lines", 3),
        ("unnormalized_text", 1),
    ]
    assert body["documents"] == 3
    assert body["sha256"] == hashlib.sha256(content).hexdigest()


def test_too_big_is_413_and_leaves_nothing(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session, settings: Settings
) -> None:
    settings.max_upload_bytes = 1000
    content = corpus_bytes(50, 5)
    assert len(content) > 1000
    error = assert_error(upload_corpus(client, alice, content), 413, "payload_too_large", "file")
    assert "1,000 bytes" in error["message"]
    assert stored_files(storage) == [] and storage.temporary_entries() == []
    assert corpus_count(session, alice) == 0


def test_too_big_by_content_length_is_refused_before_reading(
    client: TestClient, alice: TenantKey, settings: Settings
) -> None:
    settings.max_upload_bytes = 10
    content = b"x" * (2 << 20)
    assert_error(upload_corpus(client, alice, content), 413, "payload_too_large", "file")


def test_a_gzip_bomb_is_refused_at_once_and_leaves_nothing(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session
) -> None:
    """16 MiB of newlines in 70 kB: refused by the ratio cap after its first 4 MiB (it used to be inflated
    and scanned to the end, minutes for a gigabyte, before an "empty corpus")."""
    response = upload_corpus(client, alice, gzip_bomb(), filename="bomb.txt.gz")
    error = assert_error(response, 413, "payload_too_large", "file")
    assert "'bomb.txt.gz'" in error["message"] and "(MAX_COMPRESSION_RATIO)" in error["message"]
    assert stored_files(storage) == [] and storage.temporary_entries() == []
    assert corpus_count(session, alice) == 0


def test_the_decompressed_size_is_capped(
    client: TestClient, alice: TenantKey, storage: LocalStorage, session: Session, settings: Settings
) -> None:
    text = corpus_bytes(2000, 3)
    settings.max_decompressed_bytes = len(text) - 1
    for content, filename in ((gzip_bytes(text), "big.txt.gz"), (text, "big.txt")):
        error = assert_error(
            upload_corpus(client, alice, content, filename), 413, "payload_too_large", "file"
        )
        assert f"{filename!r}" in error["message"] and "(MAX_DECOMPRESSED_BYTES)" in error["message"]
    assert stored_files(storage) == [] and storage.temporary_entries() == []
    settings.max_decompressed_bytes = len(text)
    assert upload_corpus(client, alice, gzip_bytes(text), "big.txt.gz").status_code == 201
    assert corpus_count(session, alice) == 1


def test_an_upload_failing_midway_removes_its_temporary_file(
    client: TestClient,
    alice: TenantKey,
    storage: LocalStorage,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever stops an upload once its temporary file exists (a cap, the client gone, a bug), the file
    is removed."""
    content = corpus_bytes(25_000, 3)  # > 3 chunks: the temporary file exists after the first
    settings.max_decompressed_bytes = 2 * CHUNK_SIZE
    assert_error(upload_corpus(client, alice, content), 413, "payload_too_large", "file")
    assert storage.temporary_entries() == []
    settings.max_decompressed_bytes = 1 << 30

    boundary = "b0undary"
    cut = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.txt"\r\n\r\n'.encode()
        + content[: 2 * CHUNK_SIZE]
    )  # the client stops sending in the middle of the file
    headers = {**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/corpora", content=cut, headers=headers)
    assert "ended inside the file part" in assert_error(response, 400, "invalid_request")["message"]
    assert storage.temporary_entries() == []

    seen: list[int] = []

    class BrokenScanner(CorpusScanner):
        def feed(self, chunk: bytes) -> None:
            seen.append(len(storage.temporary_entries()))
            if len(seen) == 2:
                raise RuntimeError("a bug")
            super().feed(chunk)

    monkeypatch.setattr("app.corpora.service.CorpusScanner", BrokenScanner)
    with pytest.raises(RuntimeError, match="a bug"):  # the client gets a 500; the test client raises
        upload_corpus(client, alice, content)
    assert seen == [1, 1] and storage.temporary_entries() == []


def test_wrong_extension_and_missing_file(client: TestClient, alice: TenantKey) -> None:
    error = assert_error(
        upload_corpus(client, alice, corpus_bytes(), filename="paper.pdf"), 422, "validation_error", "file"
    )
    assert ".txt or .txt.gz" in error["message"]
    response = client.post("/v1/corpora", files={"name": (None, "no file")}, headers=alice.headers)
    assert "no file" in assert_error(response, 422, "validation_error", "file")["message"]
    response = client.post("/v1/corpora", data={"name": "a form without a file"}, headers=alice.headers)
    assert_error(response, 400, "invalid_request")
    response = client.post(
        "/v1/corpora", content=b"raw", headers={**alice.headers, "Content-Type": "text/plain"}
    )
    assert "multipart/form-data" in assert_error(response, 400, "invalid_request")["message"]


def test_list_paginates_newest_first_and_only_own(
    client: TestClient, alice: TenantKey, bob: TenantKey
) -> None:
    ids = [upload_corpus(client, alice, corpus_bytes(tag=str(i))).json()["id"] for i in range(5)]
    upload_corpus(client, bob, corpus_bytes(tag="bob"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"after": cursor} if cursor else {})
        page = client.get("/v1/corpora", params=params, headers=alice.headers).json()
        pages += 1
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    assert client.get("/v1/corpora", headers=bob.headers).json()["data"][0]["id"] not in ids


def test_another_tenants_corpus_is_not_found(client: TestClient, alice: TenantKey, bob: TenantKey) -> None:
    corpus_id = upload_corpus(client, alice, corpus_bytes()).json()["id"]
    missing = client.get("/v1/corpora/corp_doesnotexist", headers=bob.headers)
    theirs = client.get(f"/v1/corpora/{corpus_id}", headers=bob.headers)
    assert_error(theirs, 404, "not_found")
    assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "corp_doesnotexist", corpus_id
    )
    assert_error(client.delete(f"/v1/corpora/{corpus_id}", headers=bob.headers), 404, "not_found")
    assert client.get(f"/v1/corpora/{corpus_id}", headers=alice.headers).status_code == 200


def test_delete_removes_row_and_file(client: TestClient, alice: TenantKey, storage: LocalStorage) -> None:
    corpus_id = upload_corpus(client, alice, corpus_bytes()).json()["id"]
    response = client.delete(f"/v1/corpora/{corpus_id}", headers=alice.headers)
    assert response.status_code == 204 and response.content == b""
    assert stored_files(storage) == []
    assert not (storage.root / "corpora" / corpus_id).exists()
    assert_error(client.get(f"/v1/corpora/{corpus_id}", headers=alice.headers), 404, "not_found")


def test_delete_is_refused_while_an_active_run_uses_it(
    client: TestClient, alice: TenantKey, session: Session, storage: LocalStorage
) -> None:
    corpus_id = upload_corpus(client, alice, corpus_bytes()).json()["id"]
    eval_id = upload_corpus(client, alice, corpus_bytes(tag="eval")).json()["id"]
    replay_id = upload_corpus(client, alice, corpus_bytes(tag="replay")).json()["id"]
    run = make_run(
        session, alice.tenant, corpus_id=corpus_id, eval_corpus_id=eval_id, replay_corpus_id=replay_id
    )
    for target in (corpus_id, eval_id, replay_id):
        error = assert_error(client.delete(f"/v1/corpora/{target}", headers=alice.headers), 409, "conflict")
        assert run.id in error["message"]
    assert len(stored_files(storage)) == 3
    # once the run has finished, the corpus can go; the run keeps its record
    run.status = RunStatus.SUCCEEDED
    session.commit()
    for target in (corpus_id, replay_id):
        assert client.delete(f"/v1/corpora/{target}", headers=alice.headers).status_code == 204
    session.expire_all()
    finished = session.get(Run, run.id)
    assert finished is not None and finished.corpus_id is None and finished.replay_corpus_id is None
