"""POST /v1/runs/estimate and the runs' eta_seconds: checked like a submission, nothing stored; exact from an
analysis, approximate without; the throughput and startup that an earlier run recorded, arithmetic and all;
the queue ahead; the same figures in a queued run's eta_seconds. The worker registry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.estimates.service import QueueModel
from app.models import Run, RunMetric, utcnow
from app.runs.events import RunEventType, add_event
from app.runs.states import RunStatus
from tests.support import TenantKey, assert_error, corpus_bytes, make_run, upload_corpus
from worker.pretraining.estimates import (
    DEFAULT_STARTUP_SECONDS,
    PREPARATION_BYTES_PER_SECOND,
    approximate_corpus,
    default_tokens_per_second,
    training_flops_per_token,
)
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.preparation_rules import held_out_split
from worker.pretraining.records import ModelShape

MINILM = "minilm-l6-h384-uncased"
MINILM_SHAPE = ModelShape(hidden_size=384, num_hidden_layers=6, intermediate_size=1536, vocab_size=30522)
HYPERPARAMETERS = {"max_seq_length": 64, "max_steps": 100, "batch_size": 8, "eval_every_steps": 50}


def estimate(client: TestClient, who: TenantKey, body: dict[str, Any]) -> Any:
    return client.post("/v1/runs/estimate", json=body, headers=who.headers)


@pytest.fixture
def measured_run(session: Session, alice: TenantKey, corpus_id: str) -> Run:
    """A MiniLM run of 10 steps of 8 sequences of 60 wordpieces (max_seq_length 64) as its worker left it:
    100 s from claim to end, training windows at 100, 200 and 300 tokens/s (median 200), two evaluations of
    50 instances."""
    started = utcnow() - timedelta(hours=1)
    run = make_run(
        session,
        alice.tenant,
        status=RunStatus.SUCCEEDED,
        corpus_id=corpus_id,
        attempt=1,
        started_at=started,
        finished_at=started + timedelta(seconds=100),
        hyperparameters=Hyperparameters(max_seq_length=64, max_steps=10, batch_size=8).model_dump(
            mode="json"
        ),
        progress={"step": 10, "total_steps": 10, "tokens_seen": 10 * 8 * 60},
    )
    add_event(
        session,
        run.id,
        RunEventType.DATA_PREPARED,
        "prepared",
        data={"splits": {"train": {"mean_length": 60.0}}},
    )
    model = MINILM_SHAPE.model_dump()
    data = {"device": "cpu", "model": model, "eval_splits": {"eval": 50}, "max_steps": 10}
    add_event(session, run.id, RunEventType.TRAINING_STARTED, "started", data=data)
    rows = [
        RunMetric(run_id=run.id, split="train", name="tokens_per_second", step=s, value=v)
        for s, v in ((1, 100.0), (2, 300.0), (3, 200.0))
    ]
    rows += [
        RunMetric(run_id=run.id, split="eval", name="masked_lm_loss", step=s, value=2.0) for s in (0, 10)
    ]
    session.add_all(rows)
    session.commit()
    return run


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"hyperparameters": {"max_steps": 0}}, "hyperparameters.max_steps"),
        ({"hyperparameters": {"warmup": 0.1}}, "hyperparameters.warmup"),
        ({"hyperparameters": {"max_seq_length": 1024}}, "hyperparameters.max_seq_length"),
        ({"hyperparameters": {"eval_documents": 39}}, "hyperparameters.eval_documents"),
        ({"hyperparameters": {"replay_ratio": 0.1}}, "hyperparameters.replay_ratio"),  # no replay corpus
        ({"base_model": "checkpoint:ckpt_missing"}, "base_model"),
        ({"corpus_id": "corp_missing"}, "corpus_id"),
        ({"metadata": {"x": "y" * 20_000}}, "metadata"),
    ],
)
def test_an_estimate_is_checked_like_a_submission_and_stores_nothing(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    runs_sent: list[str],
    session: Session,
    change: dict[str, Any],
    param: str,
) -> None:
    body = {"base_model": MINILM, "corpus_id": corpus_id, **change}
    refused = estimate(client, alice, body)
    submitted = client.post("/v1/runs", json=body, headers=alice.headers)
    assert assert_error(refused, 422, "validation_error", param) == assert_error(
        submitted, 422, "validation_error", param
    )
    assert estimate(client, alice, {"base_model": MINILM, "corpus_id": corpus_id}).status_code == 200
    assert session.scalar(select(func.count()).where(Run.tenant_id == alice.tenant.id)) == 0
    assert runs_sent == []


def test_another_tenants_corpus_is_not_estimated(
    client: TestClient, alice: TenantKey, bob: TenantKey, corpus_id: str
) -> None:
    theirs = estimate(client, bob, {"base_model": MINILM, "corpus_id": corpus_id})
    missing = estimate(client, bob, {"base_model": MINILM, "corpus_id": "corp_missing"})
    assert assert_error(theirs, 422, "validation_error", "corpus_id")["message"] == assert_error(
        missing, 422, "validation_error", "corpus_id"
    )["message"].replace("corp_missing", corpus_id)


def test_without_analysis_nor_measures_the_estimate_is_approximate_with_the_defaults(
    client: TestClient, alice: TenantKey, corpus_id: str
) -> None:
    answer = estimate(
        client, alice, {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": HYPERPARAMETERS}
    )
    assert answer.status_code == 200, answer.text
    figures = answer.json()
    assert figures["exact"] is False and figures["analysis_id"] is None and figures["steps"] == 100
    expected = default_tokens_per_second(MINILM_SHAPE, "cpu", max_seq_length=64, masked_lm_prob=0.15)
    assert figures["throughput"] == {
        "tokens_per_second": round(expected, 2),
        "source": "default",
        "runs": 0,
        "device": "cpu",
        "model": "6x384",
        "max_seq_length": 64,
    }
    corpus = client.get(f"/v1/corpora/{corpus_id}", headers=alice.headers).json()
    startup = DEFAULT_STARTUP_SECONDS["cpu"] + corpus["bytes"] / PREPARATION_BYTES_PER_SECOND
    assert figures["startup_source"] == "default" and figures["startup_seconds"] == round(startup, 1)
    assert figures["queue"] == {"runs": 0, "wait_seconds": 0.0, "workers": 1, "workers_known": False}
    assert figures["eta_seconds"] == figures["total_seconds"] > figures["training_seconds"] > 0


def test_an_analysed_corpus_and_a_measured_run_give_the_exact_arithmetic(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    measured_run: Run,
    analyses_sent: list[str],
    finish_analysis: Callable[..., Any],
    analysis_figures: Callable[..., Any],
) -> None:
    body = {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": HYPERPARAMETERS}
    analyzed = {"base_model": MINILM, "hyperparameters": HYPERPARAMETERS}
    response = client.post(f"/v1/corpora/{corpus_id}/analyze", json=analyzed, headers=alice.headers)
    analysis_id = response.json()["id"]
    finish_analysis(analysis_id, analysis_figures(instances=1000, mean_length=60.0, eval_tokens=3000))

    figures = estimate(client, alice, body).json()
    assert (figures["exact"], figures["analysis_id"]) == (True, analysis_id)
    assert (figures["train_instances"], figures["steps_per_epoch"], figures["steps"]) == (1000, 125, 100)
    assert figures["tokens_per_step"] == 480.0 and figures["tokens"] == 48_000
    assert figures["throughput"] == {
        "tokens_per_second": 200.0,  # the median of the measured run's windows
        "source": "measured",
        "runs": 1,
        "device": "cpu",
        "model": "6x384",
        "max_seq_length": 64,
    }
    assert figures["seconds_per_step"] == 2.4 and figures["training_seconds"] == 240.0
    # Evaluations at steps 0, 50 and 100 over the 3,000 held-out wordpieces, at 3 x 200 tokens/s.
    assert figures["evaluations"] == 3 and figures["evaluation_tokens"] == 3000
    assert figures["evaluation_seconds"] == 15.0
    # The measured run's startup: 100 s - 4,800 tokens / 200 - 2 x 50 x 60 tokens / 600.
    assert (figures["startup_seconds"], figures["startup_source"]) == (66.0, "measured")
    assert figures["total_seconds"] == figures["eta_seconds"] == 321.0

    # Another length: the measured FLOP/s, scaled to the model's FLOPs per token at that length.
    longer = estimate(client, alice, {**body, "hyperparameters": {**HYPERPARAMETERS, "max_seq_length": 128}})
    throughput = longer.json()["throughput"]
    measured = 200.0 * training_flops_per_token(MINILM_SHAPE, sequence_length=64 * 0.9, masked_lm_prob=0.15)
    expected = measured / training_flops_per_token(
        MINILM_SHAPE, sequence_length=128 * 0.9, masked_lm_prob=0.15
    )
    assert throughput["source"] == "scaled" and throughput["tokens_per_second"] == round(expected, 2)
    assert longer.json()["exact"] is False  # analysed with max_seq_length 64 only
    assert analyses_sent == [analysis_id]


def test_a_replay_corpus_is_prepared_and_a_shared_reference_evaluated_on_its_held_out_part(
    client: TestClient, alice: TenantKey, corpus_id: str
) -> None:
    other = upload_corpus(client, alice, corpus_bytes(documents=20, sentences=4, tag="r")).json()
    base = {"base_model": MINILM, "corpus_id": corpus_id}
    h = {**HYPERPARAMETERS, "replay_ratio": 0.1}
    alone = estimate(client, alice, {**base, "hyperparameters": HYPERPARAMETERS}).json()
    replayed = estimate(client, alice, {**base, "hyperparameters": h, "replay_corpus_id": other["id"]}).json()
    # The replay corpus is prepared too (the default startup: its bytes at the preparation rate).
    assert replayed["startup_seconds"] == round(
        alone["startup_seconds"] + other["bytes"] / PREPARATION_BYTES_PER_SECOND, 1
    )
    assert replayed["evaluation_tokens"] == alone["evaluation_tokens"]

    reference = estimate(
        client,
        alice,
        {**base, "hyperparameters": h, "reference_corpus_id": other["id"], "replay_corpus_id": other["id"]},
    ).json()
    # Prepared once; only its held-out documents evaluated (the rest is replayed), as the engine does.
    assert reference["startup_seconds"] == replayed["startup_seconds"]
    config = Hyperparameters.model_validate(h).preparation()
    held = held_out_split(config, documents=20, sentences=None, eval_corpus=False).documents
    part = approximate_corpus(
        config, characters=other["stats"]["characters"], documents=20, held_out_documents=held
    )
    assert 0 < held < 20 and part.eval_tokens > 0
    assert reference["evaluation_tokens"] == alone["evaluation_tokens"] + part.eval_tokens


def test_add_domain_tokens_is_never_estimated_from_an_analysis_of_the_base_tokenizer(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    analyses_sent: list[str],
    finish_analysis: Callable[..., Any],
    analysis_figures: Callable[..., Any],
) -> None:
    analyzed = {"base_model": MINILM, "hyperparameters": HYPERPARAMETERS}
    response = client.post(f"/v1/corpora/{corpus_id}/analyze", json=analyzed, headers=alice.headers)
    finish_analysis(response.json()["id"], analysis_figures())
    body = {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": HYPERPARAMETERS}
    assert estimate(client, alice, body).json()["exact"] is True
    extended = {**body, "hyperparameters": {**HYPERPARAMETERS, "add_domain_tokens": 10}}
    figures = estimate(client, alice, extended).json()
    assert (figures["exact"], figures["analysis_id"]) == (False, None)


def test_a_queued_run_waits_for_the_runs_ahead_and_eta_seconds_follows_the_status(
    client: TestClient,
    app: FastAPI,
    alice: TenantKey,
    corpus_id: str,
    session: Session,
    measured_run: Run,
    runs_sent: list[str],
) -> None:
    app.state.worker_registry.max_age_seconds = 0  # every read models the queue afresh
    body = {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": HYPERPARAMETERS}
    own = estimate(client, alice, body).json()["total_seconds"]
    queued = client.post("/v1/runs", json=body, headers=alice.headers).json()
    assert queued["status"] == "queued" and queued["eta_seconds"] == own  # nothing ahead of it

    # A run in a worker's hands with 500 s left at its own pace, on the one slot there is.
    make_run(
        session,
        alice.tenant,
        status=RunStatus.RUNNING,
        corpus_id=corpus_id,
        attempt=1,
        started_at=utcnow(),
        created_at=utcnow() - timedelta(hours=2),
        progress={"step": 5, "total_steps": 50, "eta_seconds": 500.0},
    )
    running = client.get("/v1/runs", params={"status": "running"}, headers=alice.headers).json()["data"][0]
    assert running["eta_seconds"] == 500.0
    assert client.get(f"/v1/runs/{queued['id']}", headers=alice.headers).json()["eta_seconds"] == 500.0 + own
    ahead = estimate(client, alice, body).json()["queue"]
    assert ahead == {"runs": 2, "wait_seconds": 500.0 + own, "workers": 1, "workers_known": False}

    # Ended: no ETA (its progress keeps the pace's last word, 0).
    done = client.get(f"/v1/runs/{measured_run.id}", headers=alice.headers).json()
    assert done["status"] == "succeeded" and done["eta_seconds"] is None


def test_reads_of_runs_reuse_the_queue_model_for_a_few_seconds(
    client: TestClient,
    app: FastAPI,
    alice: TenantKey,
    corpus_id: str,
    runs_sent: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[int] = []
    build = QueueModel.build.__func__  # type: ignore[attr-defined]

    def counted(cls: type[QueueModel], *args: Any, **kwargs: Any) -> QueueModel:
        builds.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(QueueModel, "build", classmethod(counted))
    app.state.worker_registry.max_age_seconds = 3600
    body = {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": HYPERPARAMETERS}
    first = client.post("/v1/runs", json=body, headers=alice.headers).json()
    assert len(builds) == 1 and first["eta_seconds"] is not None
    for _ in range(3):
        assert (
            client.get(f"/v1/runs/{first['id']}", headers=alice.headers).json()["eta_seconds"]
            == (first["eta_seconds"])
        )
        client.get("/v1/runs", headers=alice.headers)
    assert len(builds) == 1
    # A run the cached model does not hold is modelled afresh, the runs ahead of it included.
    second = client.post("/v1/runs", json=body, headers=alice.headers).json()
    assert len(builds) == 2 and second["eta_seconds"] > first["eta_seconds"]
    app.state.worker_registry.max_age_seconds = 0  # expired: built again
    client.get(f"/v1/runs/{first['id']}", headers=alice.headers)
    assert len(builds) == 3


def test_the_estimate_is_the_only_method_of_its_path(client: TestClient, alice: TenantKey) -> None:
    # GET /v1/runs/{run_id} does not take "estimate" for an id: the path's other methods are a 405.
    response = client.get("/v1/runs/estimate", headers=alice.headers)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert client.options("/v1/runs/estimate").headers["Allow"] == "OPTIONS, POST"
