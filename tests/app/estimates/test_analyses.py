"""Corpus analyses through the API: queued once per (corpus, tokenizer, preparation settings), answered from
the kept result with the steps of each request, sent again when lost, checked like a run submission,
tenant-scoped. The worker's side is simulated with its own SQL (the real worker: tests/e2e)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Analysis, AnalysisStatus, utcnow
from tests.support import TenantKey, assert_error

MINILM = "minilm-l6-h384-uncased"


def analyze(client: TestClient, who: TenantKey, corpus_id: str, **hyperparameters: Any) -> Any:
    body = {"base_model": MINILM, "hyperparameters": hyperparameters}
    return client.post(f"/v1/corpora/{corpus_id}/analyze", json=body, headers=who.headers)


def test_one_analysis_per_key_answered_with_the_steps_of_each_request(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    analyses_sent: list[str],
    finish_analysis: Callable[..., Any],
    analysis_figures: Callable[..., Any],
) -> None:
    first = analyze(client, alice, corpus_id, max_seq_length=64, max_steps=10)
    assert first.status_code == 202, first.text
    queued = first.json()
    assert queued["id"].startswith("ana_") and queued["status"] == "queued" and queued["analysis"] is None
    location = f"/v1/corpora/{corpus_id}/analyses/{queued['id']}"
    assert first.headers["Location"] == location
    assert queued["preparation"]["max_seq_length"] == 64 and queued["base_model"] == MINILM
    assert analyses_sent == [queued["id"]]

    # The batch and the duration are not preparation settings: the same analysis, not sent again.
    again = analyze(client, alice, corpus_id, max_seq_length=64, batch_size=8, num_epochs=2)
    assert again.status_code == 202 and again.json()["id"] == queued["id"]
    other = analyze(client, alice, corpus_id, max_seq_length=32)
    assert other.status_code == 202 and other.json()["id"] != queued["id"]
    assert analyses_sent == [queued["id"], other.json()["id"]]
    polled = client.get(location, headers=alice.headers)
    assert polled.status_code == 200 and polled.json()["status"] == "queued"

    finish_analysis(queued["id"], analysis_figures(instances=1000, mean_length=60.0))
    done = analyze(client, alice, corpus_id, max_seq_length=64, batch_size=8, num_epochs=2)
    assert done.status_code == 200, done.text
    analysis = done.json()["analysis"]
    assert done.json()["status"] == "succeeded" and analysis["train"]["instances"] == 1000
    per_epoch = math.ceil(1000 / 8)
    assert (
        analysis["steps"]["steps_per_epoch"] == per_epoch
        and analysis["steps"]["total_steps"] == 2 * per_epoch
    )
    assert analysis["steps"]["tokens_per_step"] == 8 * 60.0
    # GET: the steps of the request that created it (max_steps 10).
    assert client.get(location, headers=alice.headers).json()["analysis"]["steps"]["total_steps"] == 10
    assert len(analyses_sent) == 2


def test_a_lost_analysis_is_sent_again_when_it_is_asked_for(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    session: Session,
    analyses_sent: list[str],
    finish_analysis: Callable[..., Any],
) -> None:
    analysis_id = analyze(client, alice, corpus_id).json()["id"]
    location = f"/v1/corpora/{corpus_id}/analyses/{analysis_id}"
    row = session.get_one(Analysis, analysis_id)

    # Its task was sent an hour ago and no worker took it (REQUEUE_AFTER_SECONDS: 600).
    row.sent_at = utcnow() - timedelta(hours=1)
    session.commit()
    assert client.get(location, headers=alice.headers).json()["status"] == "queued"
    assert analyses_sent == [analysis_id, analysis_id]

    # Its worker took it and stopped answering (HEARTBEAT_TIMEOUT_SECONDS: 120): queued and sent again.
    from app.estimates import repository

    attempt = repository.claim(session, analysis_id, now=utcnow() - timedelta(hours=1))
    session.commit()
    assert attempt == 1
    assert client.get(location, headers=alice.headers).json()["status"] == "queued"
    assert analyses_sent == [analysis_id] * 3
    # The old attempt's late end is refused: it no longer holds the analysis.
    assert not repository.finish(session, analysis_id, 1, error={"type": "internal_error", "message": "x"})

    # A failure another try may cure is retried by the next request; one of the corpus is kept.
    finish_analysis(analysis_id, error={"type": "internal_error", "message": "a bug"})
    assert analyze(client, alice, corpus_id).status_code == 202
    assert analyses_sent == [analysis_id] * 4
    error = {"type": "data_preparation_error", "message": "the corpus has no usable document"}
    finish_analysis(analysis_id, error=error)
    failed = analyze(client, alice, corpus_id)
    assert failed.status_code == 200 and failed.json()["status"] == "failed"
    assert failed.json()["error"] == {**error, "line": None, "code": None}
    assert analyses_sent == [analysis_id] * 4
    session.expire_all()
    assert session.get_one(Analysis, analysis_id).status == AnalysisStatus.FAILED


def test_an_analysis_whose_attempts_all_die_fails_for_good(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    session: Session,
    settings: Settings,
    analyses_sent: list[str],
    finish_analysis: Callable[..., Any],
) -> None:
    from app.estimates import repository

    analysis_id = analyze(client, alice, corpus_id).json()["id"]
    location = f"/v1/corpora/{corpus_id}/analyses/{analysis_id}"
    for attempt in range(1, settings.max_attempts + 1):
        # Each attempt's process dies: a claim that never beats again (HEARTBEAT_TIMEOUT_SECONDS: 120).
        assert repository.claim(session, analysis_id, now=utcnow() - timedelta(hours=1)) == attempt
        session.commit()
        answer = client.get(location, headers=alice.headers).json()
        assert answer["status"] == ("queued" if attempt < settings.max_attempts else "failed")
    assert answer["error"]["type"] == "attempts_exhausted"
    assert f"attempt {settings.max_attempts} of {settings.max_attempts}" in answer["error"]["message"]
    assert analyses_sent == [analysis_id] * settings.max_attempts
    # Asked for again: answered as it is, not sent again.
    again = analyze(client, alice, corpus_id)
    assert again.status_code == 200 and again.json()["status"] == "failed"
    assert analyses_sent == [analysis_id] * settings.max_attempts


@pytest.mark.parametrize(
    ("hyperparameters", "base_model", "param"),
    [
        ({"max_steps": 0}, MINILM, "hyperparameters.max_steps"),
        ({"warmup": 0.1}, MINILM, "hyperparameters.warmup"),
        ({"max_seq_length": 1024}, MINILM, "hyperparameters.max_seq_length"),  # 512 positions
        ({"eval_documents": 39}, MINILM, "hyperparameters.eval_documents"),  # leaves one: no NSP
        ({}, "no-such-model", "base_model"),
    ],
)
def test_an_analysis_is_checked_like_a_run_submission(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    analyses_sent: list[str],
    runs_sent: list[str],
    hyperparameters: dict[str, Any],
    base_model: str,
    param: str,
) -> None:
    body = {"base_model": base_model, "hyperparameters": hyperparameters}
    refused = client.post(f"/v1/corpora/{corpus_id}/analyze", json=body, headers=alice.headers)
    submitted = client.post("/v1/runs", json={**body, "corpus_id": corpus_id}, headers=alice.headers)
    assert assert_error(refused, 422, "validation_error", param) == assert_error(
        submitted, 422, "validation_error", param
    )
    assert analyses_sent == [] and runs_sent == []


def test_another_tenants_corpus_and_analysis_answer_like_missing_ones(
    client: TestClient, alice: TenantKey, bob: TenantKey, corpus_id: str, analyses_sent: list[str]
) -> None:
    analysis_id = analyze(client, alice, corpus_id).json()["id"]
    theirs = analyze(client, bob, corpus_id)
    missing = analyze(client, bob, "corp_missing")
    assert assert_error(theirs, 404, "not_found")["message"] == assert_error(missing, 404, "not_found")[
        "message"
    ].replace("corp_missing", corpus_id)
    for path in (
        f"/v1/corpora/{corpus_id}/analyses/{analysis_id}",
        f"/v1/corpora/{corpus_id}/analyses/ana_x",
    ):
        assert_error(client.get(path, headers=bob.headers), 404, "not_found")
    # The analysis is its corpus's: not found under another corpus of alice's.
    assert_error(
        client.get(f"/v1/corpora/corp_x/analyses/{analysis_id}", headers=alice.headers), 404, "not_found"
    )
    assert analyses_sent == [analysis_id]
