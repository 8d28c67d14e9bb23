"""The evaluation executor without Celery: the claim, inputs that are gone, a cancel honoured by the
evaluation process, an evaluation process that dies (retried, then failed). Real spawned children; the
comparison itself runs in tests/e2e (and the library's in tests/worker/evaluation)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, update

from app.db import session_scope
from app.evaluations import lifecycle
from app.evaluations.states import EvaluationStatus
from app.ids import new_id
from app.models import Dataset, Evaluation
from app.storage.keys import dataset_file_key
from tests.support import Factory, topic_dataset_tsv
from tests.worker import evaluation_children
from worker.context import WorkerContext
from worker.evaluation.settings import EvaluationHyperparameters
from worker.evaluation_executor import EvaluationAttempt, execute_evaluation
from worker.failures import RunFailure

MINILM = "minilm-l6-h384-uncased"


@dataclasses.dataclass
class Rows:
    """Committed datasets and evaluations under the factory's tenant, deleted at the end (before it)."""

    factory: Factory

    def dataset(self, content: bytes) -> str:
        dataset_id = new_id("ds")
        key = dataset_file_key(dataset_id, "train", "tsv")
        with self.factory.storage.open_write(key) as pending:
            pending.write(content)
            pending.commit()
        with session_scope(self.factory.session_factory) as session:
            session.add(
                Dataset(
                    id=dataset_id,
                    tenant_id=self.factory.tenant_id,
                    name="topics",
                    filename="topics.tsv",
                    sha256=hashlib.sha256(content).hexdigest(),
                    format="tsv",
                    storage_key=key,
                    bytes=len(content),
                    examples=content.count(b"\n") - 1,
                    labels=[],
                    has_text_pair=False,
                    ignored_columns=[],
                )
            )
        return dataset_id

    def evaluation(self, dataset_id: str, models: list[str], **values: Any) -> str:
        evaluation_id = new_id("eval")
        with session_scope(self.factory.session_factory) as session:
            session.add(
                Evaluation(
                    id=evaluation_id,
                    tenant_id=self.factory.tenant_id,
                    dataset_id=dataset_id,
                    models=models,
                    resolved_models=[{"spec": model, "kind": "builtin"} for model in models],
                    method="probe",
                    seeds=2,
                    hyperparameters=EvaluationHyperparameters().model_dump(mode="json"),
                    progress={},
                    **values,
                )
            )
        return evaluation_id

    def get(self, evaluation_id: str) -> Evaluation:
        with self.factory.session_factory() as session:
            return session.get_one(Evaluation, evaluation_id)

    def delete(self) -> None:
        with session_scope(self.factory.session_factory) as session:
            for model in (Evaluation, Dataset):
                session.execute(delete(model).where(model.tenant_id == self.factory.tenant_id))


@pytest.fixture
def rows(factory: Factory) -> Iterator[Rows]:
    made = Rows(factory)
    yield made
    made.delete()


@pytest.fixture
def dataset_id(rows: Rows, documents: list[list[str]]) -> str:
    return rows.dataset(topic_dataset_tsv(documents))


def test_a_duplicate_delivery_does_nothing(
    rows: Rows, dataset_id: str, worker_context: WorkerContext
) -> None:
    evaluation_id = rows.evaluation(dataset_id, [MINILM], status=EvaluationStatus.RUNNING, attempt=1)
    assert execute_evaluation(evaluation_id, context=worker_context) is None
    assert execute_evaluation("eval_that_does_not_exist", context=worker_context) is None
    evaluation = rows.get(evaluation_id)
    assert (evaluation.status, evaluation.attempt) == (EvaluationStatus.RUNNING, 1)


def test_inputs_that_are_gone_fail_it_before_anything_runs(
    rows: Rows, dataset_id: str, worker_context: WorkerContext
) -> None:
    gone_model = rows.evaluation(dataset_id, [MINILM, "run:run_gone"])
    assert execute_evaluation(gone_model, context=worker_context) == EvaluationStatus.FAILED
    evaluation = rows.get(gone_model)
    assert evaluation.attempt == 1 and evaluation.finished_at is not None
    assert evaluation.error == {
        "type": "input_error",
        "message": "models[1] (run:run_gone) can no longer be used: no run with id 'run_gone'",
    }

    worker_context.storage.delete(dataset_file_key(dataset_id, "train", "tsv"))
    gone_file = rows.evaluation(dataset_id, [MINILM])
    assert execute_evaluation(gone_file, context=worker_context) == EvaluationStatus.FAILED
    assert rows.get(gone_file).error == {
        "type": "input_error",
        "message": f"a file of the dataset {dataset_id} is missing from storage; ask the operator",
    }


def test_a_cancel_stops_the_evaluation_process(
    rows: Rows, dataset_id: str, worker_context: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "worker.evaluation_executor.run_evaluation_job", evaluation_children.one_fit_then_until_stopped
    )
    evaluation_id = rows.evaluation(dataset_id, [MINILM])
    seen: dict[str, Any] = {}

    def cancel_after_the_first_fit() -> None:
        """What the API's cancel does to a running evaluation, once its progress shows a fit done."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            evaluation = rows.get(evaluation_id)
            if evaluation.status == EvaluationStatus.RUNNING and evaluation.progress.get("done") == 1:
                seen["progress"] = evaluation.progress
                with session_scope(rows.factory.session_factory) as session:
                    session.execute(
                        update(Evaluation)
                        .where(Evaluation.id == evaluation_id)
                        .values(status=EvaluationStatus.CANCELLING)
                    )
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_after_the_first_fit)
    canceller.start()
    status = execute_evaluation(evaluation_id, context=worker_context)
    canceller.join()

    assert seen["progress"] == {"done": 1, "total": 2, "model": MINILM, "seed": 0}
    assert status == EvaluationStatus.CANCELLED
    evaluation = rows.get(evaluation_id)
    assert evaluation.status == EvaluationStatus.CANCELLED and evaluation.finished_at is not None
    assert evaluation.result is None and evaluation.error is None


def test_a_killed_evaluation_process_is_retried_then_fails(
    rows: Rows, dataset_id: str, worker_context: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.evaluation_executor.run_evaluation_job", evaluation_children.killed_at_once)
    sent: list[str] = []
    context = dataclasses.replace(
        worker_context,
        settings=worker_context.settings.model_copy(update={"max_attempts": 2}),
        enqueue_evaluation=sent.append,
    )
    evaluation_id = rows.evaluation(dataset_id, [MINILM])

    assert execute_evaluation(evaluation_id, context=context) == EvaluationStatus.QUEUED
    evaluation = rows.get(evaluation_id)
    assert (evaluation.status, evaluation.attempt, evaluation.error) == (EvaluationStatus.QUEUED, 1, None)
    assert sent == [evaluation_id] and evaluation.sent_at is not None

    assert execute_evaluation(evaluation_id, context=context) == EvaluationStatus.FAILED
    evaluation = rows.get(evaluation_id)
    assert evaluation.attempt == 2 and sent == [evaluation_id]
    assert evaluation.error == {
        "type": "evaluation_process_died",
        "message": "attempt 2 of 2, the last, was interrupted: the evaluation process was killed by signal "
        "SIGKILL (often the host's out-of-memory killer) before finishing; submit the evaluation again "
        "(POST /v1/evaluations)",
        "exit_code": -9,
    }


def test_a_cancel_after_the_last_heartbeat_stops_an_interrupted_attempt(
    rows: Rows, dataset_id: str, worker_context: WorkerContext
) -> None:
    """The process died and the cancel came after the heartbeat the supervisor last read (it still
    believes ``running``): the retry (from ``running`` only) is refused, so the attempt stops it rather than
    leaving it ``cancelling`` until the reaper."""
    evaluation_id = rows.evaluation(dataset_id, [MINILM])
    with session_scope(worker_context.session_factory) as session:
        claimed = lifecycle.claim_evaluation(session, evaluation_id, worker_context.worker_id)
    assert claimed is not None
    attempt = EvaluationAttempt(claimed, worker_context)
    assert attempt.status == EvaluationStatus.RUNNING
    with session_scope(worker_context.session_factory) as session:
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id)
            .values(status=EvaluationStatus.CANCELLING)
        )

    failure = RunFailure("evaluation_process_died", "the evaluation process was killed")
    assert attempt.retry_or_fail(failure) == EvaluationStatus.CANCELLED
    evaluation = rows.get(evaluation_id)
    assert evaluation.status == EvaluationStatus.CANCELLED and evaluation.finished_at is not None
    assert evaluation.error is None
