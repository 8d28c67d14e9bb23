"""Uploads a process takes at once: one more is answered 429 with Retry-After before its body is read, and
the slot comes back when the upload ends; liveness and readiness answer while every upload slot and every
request thread is taken."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.api.upload_slots import RETRY_AFTER_SECONDS, UploadSlots
from app.config import Settings
from app.storage import LocalStorage
from tests.support import TenantKey, assert_error, corpus_bytes, fake_bert_files, tar_gz, upload_corpus


def test_an_upload_beyond_the_limit_gets_429_with_retry_after(
    settings: Settings, session_factory: sessionmaker[Session], storage: LocalStorage, alice: TenantKey
) -> None:
    settings = settings.model_copy(update={"max_concurrent_uploads": 1})
    app = create_app(settings, session_factory=session_factory, storage=storage)
    with TestClient(app) as client:
        slots: UploadSlots = app.state.upload_slots
        assert slots.slots == 1
        slots.acquire()  # an upload in progress
        try:
            refused = [
                upload_corpus(client, alice, corpus_bytes()),
                client.post(
                    "/v1/checkpoints",
                    files={"file": ("m.tar.gz", tar_gz(fake_bert_files()))},
                    headers=alice.headers,
                ),
            ]
            for response in refused:
                error = assert_error(response, 429, "too_many_requests")
                assert "MAX_CONCURRENT_UPLOADS" in error["message"]
                assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert slots.held == 1
        finally:
            slots.release()
        assert upload_corpus(client, alice, corpus_bytes()).status_code == 201
        assert (slots.held, slots.running) == (0, 0)  # given back when the upload ended


def test_health_answers_while_every_thread_and_upload_slot_is_taken(app: FastAPI, client: TestClient) -> None:
    """Nine slow uploads once held every thread, and /healthz stopped answering: now neither probe needs
    one of the request threads."""
    slots: UploadSlots = app.state.upload_slots
    for _ in range(slots.slots):
        slots.acquire()
    threads = client.portal.call(anyio.to_thread.current_default_thread_limiter)
    holders = [object() for _ in range(int(threads.total_tokens))]
    for holder in holders:
        client.portal.call(threads.acquire_on_behalf_of, holder)
    probes = ThreadPoolExecutor(1)
    try:
        answers = probes.submit(lambda: (client.get("/healthz"), client.get("/readyz")))
        healthz, readyz = answers.result(timeout=30)  # the old probes waited for a thread for ever
        assert healthz.json() == {"status": "ok"}
        assert readyz.status_code == 200, readyz.text
    finally:
        for holder in holders:
            client.portal.call(threads.release_on_behalf_of, holder)
        for _ in range(slots.slots):
            slots.release()
        probes.shutdown()
