"""Evaluations through the REST API: submission (validated before anything is queued, errors naming the
field), tenant scoping, listing, cancel and delete; what an active evaluation keeps from being deleted;
and a run's ``downstream`` field, from its submission to the evaluation the worker queues when it
succeeds."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db import session_scope
from app.evaluations import service
from app.evaluations.states import EvaluationStatus
from app.models import Evaluation, Run
from app.runs.states import RunStatus
from tests.app.evaluations.conftest import upload_dataset
from tests.support import TenantKey, assert_error, corpus_bytes, make_run, topic_dataset_tsv, upload_corpus
from worker.evaluation.settings import EvaluationHyperparameters

MINILM = "minilm-l6-h384-uncased"


def test_an_evaluation_is_queued_with_its_models_resolved_and_defaults_filled_in(
    evaluate: Any, client: TestClient, alice: TenantKey, dataset_id: str, succeeded_run: Run, sent: Any
) -> None:
    response = evaluate(models=[MINILM, f" run:{succeeded_run.id} "], method="probe", seeds=2)
    assert response.status_code == 202, response.text
    evaluation = response.json()
    assert evaluation["id"].startswith("eval_")
    assert response.headers["Location"] == f"/v1/evaluations/{evaluation['id']}"
    assert evaluation["status"] == "queued" and evaluation["attempt"] == 0
    assert (evaluation["dataset_id"], evaluation["run_id"]) == (dataset_id, None)
    assert evaluation["models"] == [MINILM, f" run:{succeeded_run.id} "]  # as given
    assert evaluation["resolved_models"] == [
        {"spec": MINILM, "kind": "builtin"},
        {"spec": f"run:{succeeded_run.id}", "kind": "run"},
    ]
    assert (evaluation["method"], evaluation["seeds"]) == ("probe", 2)
    assert evaluation["hyperparameters"] == EvaluationHyperparameters().model_dump(mode="json")
    assert evaluation["progress"] == {"done": None, "total": None, "model": None, "seed": None}
    assert evaluation["result"] is None and evaluation["error"] is None
    assert sent["evaluations"] == [evaluation["id"]]
    assert client.get(f"/v1/evaluations/{evaluation['id']}", headers=alice.headers).json() == evaluation


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"dataset_id": "ds_missing"}, "dataset_id"),
        ({"models": []}, "models"),
        ({"models": [MINILM] * 9}, "models"),
        ({"models": [MINILM, "no-such-model"]}, "models[1]"),
        ({"models": ["run:run_missing"]}, "models[0]"),
        ({"models": ["checkpoint:ckpt_missing"]}, "models[0]"),
        ({"models": ["run:not a spec"]}, "models[0]"),
        ({"models": [MINILM, f" {MINILM}"]}, "models[1]"),
        ({"method": "zero-shot"}, "method"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": 21}, "seeds"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"epochs": 3}}, "hyperparameters.epochs"),
        ({"method": "probe", "hyperparameters": {"learning_rate": 1e-4}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"probe_cs": 4}}, "hyperparameters.probe_cs"),  # ignored by finetune
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field_and_nothing_is_queued(
    evaluate: Any, sent: Any, body: dict[str, Any], param: str
) -> None:
    assert_error(evaluate(**body), 422, "validation_error", param)
    assert sent["evaluations"] == []


def test_models_that_cannot_be_compared_yet_are_refused_with_the_reason(
    evaluate: Any, session: Session, alice: TenantKey, bob: TenantKey, succeeded_run: Run
) -> None:
    training = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    error = assert_error(
        evaluate(models=[MINILM, f"run:{training.id}"]), 422, "validation_error", "models[1]"
    )
    assert "running" in error["message"] and "run:<id>@<step>" in error["message"]
    error = assert_error(evaluate(models=[f"run:{succeeded_run.id}@5"]), 422, "validation_error", "models[0]")
    assert "no kept checkpoint at step 5" in error["message"]
    # Another tenant's run answers like a missing one.
    bobs = make_run(session, bob.tenant, status=RunStatus.SUCCEEDED)
    error = assert_error(evaluate(models=[f"run:{bobs.id}"]), 422, "validation_error", "models[0]")
    assert error["message"] == f"no run with id {bobs.id!r}"


def test_another_tenants_dataset_and_evaluations_are_not_found(
    evaluate: Any, client: TestClient, bob: TenantKey, documents: list[list[str]]
) -> None:
    bobs_dataset = upload_dataset(client, bob, topic_dataset_tsv(documents, per_label=5))
    assert_error(evaluate(dataset_id=bobs_dataset), 422, "validation_error", "dataset_id")
    evaluation_id = evaluate().json()["id"]
    for method, path in [
        ("GET", f"/v1/evaluations/{evaluation_id}"),
        ("POST", f"/v1/evaluations/{evaluation_id}/cancel"),
        ("DELETE", f"/v1/evaluations/{evaluation_id}"),
    ]:
        assert_error(client.request(method, path, headers=bob.headers), 404, "not_found")
    assert client.get("/v1/evaluations", headers=bob.headers).json() == {"data": [], "next_cursor": None}


def test_evaluations_are_listed_newest_first_a_page_at_a_time(
    evaluate: Any, client: TestClient, alice: TenantKey
) -> None:
    ids = [evaluate(seeds=seeds).json()["id"] for seeds in (1, 2, 3)]
    first = client.get("/v1/evaluations", params={"limit": 2}, headers=alice.headers).json()
    assert [evaluation["id"] for evaluation in first["data"]] == ids[::-1][:2]
    rest = client.get(
        "/v1/evaluations", params={"limit": 2, "after": first["next_cursor"]}, headers=alice.headers
    ).json()
    assert [evaluation["id"] for evaluation in rest["data"]] == ids[:1] and rest["next_cursor"] is None
    assert_error(client.get("/v1/evaluations", params={"after": "x"}, headers=alice.headers), 422,
                 "validation_error", "after")  # fmt: skip


def test_cancel_and_delete(evaluate: Any, client: TestClient, session: Session, alice: TenantKey) -> None:
    queued, running = evaluate().json()["id"], evaluate().json()["id"]
    session.get_one(Evaluation, running).status = EvaluationStatus.RUNNING
    session.commit()

    assert_error(client.delete(f"/v1/evaluations/{queued}", headers=alice.headers), 409, "conflict")
    cancelled = client.post(f"/v1/evaluations/{queued}/cancel", headers=alice.headers).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = client.post(f"/v1/evaluations/{queued}/cancel", headers=alice.headers).json()
    assert again == cancelled  # idempotent
    # A running evaluation is asked to stop: its worker sees `cancelling` at its next heartbeat.
    stopping = client.post(f"/v1/evaluations/{running}/cancel", headers=alice.headers).json()
    assert stopping["status"] == "cancelling" and stopping["finished_at"] is None
    assert_error(client.delete(f"/v1/evaluations/{running}", headers=alice.headers), 409, "conflict")

    assert client.delete(f"/v1/evaluations/{queued}", headers=alice.headers).status_code == 204
    assert_error(client.get(f"/v1/evaluations/{queued}", headers=alice.headers), 404, "not_found")


def test_what_an_active_evaluation_uses_cannot_be_deleted(
    evaluate: Any, client: TestClient, alice: TenantKey, dataset_id: str, succeeded_run: Run
) -> None:
    evaluation_id = evaluate(models=[MINILM, f"run:{succeeded_run.id}"]).json()["id"]
    error = assert_error(client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers), 409, "conflict")
    assert evaluation_id in error["message"]
    error = assert_error(
        client.delete(f"/v1/runs/{succeeded_run.id}", headers=alice.headers), 409, "conflict"
    )
    assert evaluation_id in error["message"]

    client.post(f"/v1/evaluations/{evaluation_id}/cancel", headers=alice.headers)
    assert client.delete(f"/v1/runs/{succeeded_run.id}", headers=alice.headers).status_code == 204
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers).status_code == 204
    # The finished evaluation keeps its record; its dataset reference is gone with the dataset.
    kept = client.get(f"/v1/evaluations/{evaluation_id}", headers=alice.headers).json()
    assert kept["status"] == "cancelled" and kept["dataset_id"] is None


# -- a run's downstream field ----------------------------------------------------------------------------


@pytest.fixture
def submit_run(client: TestClient, alice: TenantKey, sent: Any) -> Any:
    corpus = upload_corpus(client, alice, corpus_bytes()).json()["id"]

    def submit(**body: Any) -> Any:
        return client.post(
            "/v1/runs", json={"base_model": MINILM, "corpus_id": corpus, **body}, headers=alice.headers
        )

    return submit


@pytest.mark.parametrize(
    ("downstream", "param"),
    [
        ({"dataset_id": "ds_missing"}, "downstream.dataset_id"),
        ({}, "downstream.dataset_id"),
        ({"seeds": 0}, "downstream.seeds"),
        ({"method": "zero-shot"}, "downstream.method"),
        ({"hyperparameters": {"num_epochs": 0}}, "downstream.hyperparameters.num_epochs"),
        ({"method": "probe", "hyperparameters": {"batch_size": 8}}, "downstream.hyperparameters.batch_size"),
        ({"models": [MINILM]}, "downstream.models"),  # the models are the run's: base and final
    ],
)
def test_a_bad_downstream_field_refuses_the_run(
    submit_run: Any, dataset_id: str, sent: Any, downstream: dict[str, Any], param: str
) -> None:
    body = {"dataset_id": dataset_id, **downstream} if downstream else {}
    assert_error(submit_run(downstream=body), 422, "validation_error", param)
    assert sent["runs"] == []


def test_a_run_with_downstream_settings_queues_their_evaluation_when_it_succeeds(
    submit_run: Any,
    client: TestClient,
    alice: TenantKey,
    dataset_id: str,
    session: Session,
    session_factory: Any,
    sent: Any,
) -> None:
    run = submit_run(downstream={"dataset_id": dataset_id, "method": "probe", "seeds": 2}).json()
    hyperparameters = EvaluationHyperparameters().model_dump(mode="json")
    assert run["downstream"] == {
        "dataset_id": dataset_id, "method": "probe", "seeds": 2, "hyperparameters": hyperparameters,
        "evaluation_id": None, "status": None, "progress": None, "result": None, "error": None,
    }  # fmt: skip
    # Its dataset is in use from now on: the evaluation needs it when the run ends.
    error = assert_error(client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers), 409, "conflict")
    assert run["id"] in error["message"]
    assert client.post("/v1/runs", json={"base_model": MINILM, "corpus_id": run["corpus_id"]},
                       headers=alice.headers).json()["downstream"] is None  # fmt: skip

    # What the worker does in the transaction that records the success (worker.executor._succeed).
    session.get_one(Run, run["id"]).status = RunStatus.SUCCEEDED
    session.commit()
    queued: list[str] = []
    with session_scope(session_factory) as worker_session:
        evaluation = service.queue_downstream_evaluation(worker_session, run["id"], enqueue=queued.append)
        assert evaluation is not None and queued == []  # sent once committed
    assert queued == [evaluation.id]
    with session_scope(session_factory) as worker_session:  # a second success write queues nothing new
        again = service.queue_downstream_evaluation(worker_session, run["id"], enqueue=queued.append)
        assert again is not None and again.id == evaluation.id
    assert queued == [evaluation.id]

    stored = client.get(f"/v1/evaluations/{evaluation.id}", headers=alice.headers).json()
    assert stored["models"] == [MINILM, f"run:{run['id']}"] and stored["run_id"] == run["id"]
    assert (stored["method"], stored["seeds"], stored["dataset_id"]) == ("probe", 2, dataset_id)
    shown = client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json()["downstream"]
    assert (shown["evaluation_id"], shown["status"], shown["result"]) == (evaluation.id, "queued", None)

    # Deleted once finished: the run keeps its settings, with no evaluation (as its description says).
    assert client.post(f"/v1/evaluations/{evaluation.id}/cancel", headers=alice.headers).status_code == 200
    assert client.delete(f"/v1/evaluations/{evaluation.id}", headers=alice.headers).status_code == 204
    shown = client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json()["downstream"]
    assert (shown["evaluation_id"], shown["status"], shown["method"]) == (None, None, "probe")
