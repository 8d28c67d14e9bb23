"""The API against its own OpenAPI schema (``/openapi.json``), with schemathesis: every operation with
generated input, valid and invalid; then scenarios, sequences of calls that follow the schema's links
(:mod:`app.api.openapi_links`). The database is seeded first (a corpus, a checkpoint, a labelled dataset,
a succeeded run with metrics, events, a kept checkpoint and its model, a failed run that can be resumed), and
the seeded ids are drawn for half of the parameters that take one, so that calls reach real resources, not
only 404s.

Each response goes through schemathesis's default checks: no 5xx; the status code, content type, headers
and body as the schema documents them; valid input accepted and invalid input refused; authentication
enforced; in scenarios, a deleted resource gone and a created one there. The app is called in-process
(ASGI) with an API key of a tenant of the test's rolled-back database; the runs submitted are never sent to
a queue.

Bounded and deterministic: a fixed number of examples per operation and of scenarios, drawn without
randomness (``derandomize``), each one starting from the seeded state (database, storage, live streams),
so that a failure comes back when the test runs again. A run's live stream ends at once when the run has
ended; that of a run that has not (nothing executes the runs submitted here) is cut after STREAM_SECONDS,
and what it sent by then is checked.

The examples come from schemathesis's public Python API (``APIOperation.as_strategy``,
``as_state_machine``), not its pytest plugin: ``schemathesis.pytest.from_fixture`` needs pytest's private
``Item._nodeid``, gone in pytest 9.2. So its coverage phase (boundary values, undocumented methods) is not
run: the third test sends every path the methods it lacks.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import allow_header_conformance
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app.api.deps import (
    get_analysis_enqueuer,
    get_evaluation_enqueuer,
    get_run_enqueuer,
    get_stream_options,
)
from app.evaluations.states import EvaluationStatus
from app.ids import new_id
from app.models import Analysis, Evaluation, Run, Webhook
from app.runs.events import RunEventType, add_event
from app.runs.live import StatusMessage, publish, stream_key
from app.runs.states import RunStatus
from app.runs.stream import StreamOptions
from app.storage import LocalStorage
from app.storage.keys import run_checkpoint_key
from tests.support import (
    REDIS_URL,
    TenantKey,
    add_checkpoint_row,
    corpus_bytes,
    fake_bert_files,
    insert_metric_points,
    make_run,
    noisy_points,
    tar_gz,
    upload_corpus,
    write_complete_checkpoint,
    write_directory,
)
from worker.evaluation.settings import EvaluationHyperparameters
from worker.pretraining.hyperparameters import Hyperparameters

# Examples per operation and kind of input (valid, invalid); scenarios, and calls per scenario.
MAX_EXAMPLES = 12
SCENARIOS = 100
STEPS_PER_SCENARIO = 8
STREAM_SECONDS = 1.0
# What valid input may get: schemathesis's default, and 422 where the server checks what no schema can
# say: the content of an uploaded file, the resources a run or an evaluation names (its corpus or dataset, its
# base model or models), text holding a NUL character (app.db.is_nul_refused).
ACCEPTED_OR_CHECKED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
BUILTIN_MODEL = "minilm-l6-h384-uncased"
STEP = 10  # of the seeded runs' checkpoint
# Hypothesis: the same examples every time, none shrunk (a failure is reported as found), no database.
BOUNDED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@dataclass(frozen=True)
class Seeded:
    """What the database holds before the first request, all of it alice's."""

    corpus_id: str
    checkpoint_id: str
    dataset_id: str
    succeeded_run_id: str  # metrics, events, a kept checkpoint at `step`, its final model, its live stream
    failed_run_id: str  # a kept checkpoint at `step`: it can be resumed
    step: int
    analysis_id: str = ""  # an analysis of the corpus, queued (never sent: no worker runs here)
    evaluation_id: str = ""  # an evaluation of the dataset, cancelled (it can be deleted)
    webhook_id: str = ""  # a webhook of alice's (nothing is delivered here: no worker runs)


@dataclass
class Answers:
    """The status codes each operation answered."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)

    def record(self, operation: str, status: int) -> None:
        self.statuses.setdefault(operation, Counter())[status] += 1

    def succeeded(self) -> set[str]:
        return {operation for operation, seen in self.statuses.items() if any(200 <= s < 300 for s in seen)}


@pytest.fixture
def live() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def seeded(
    app: FastAPI, session: Session, alice: TenantKey, storage: LocalStorage, live: redis.Redis
) -> Iterator[Seeded]:
    """A corpus and a checkpoint uploaded through the API; a succeeded and a failed run, as the worker
    leaves them (rows, files, live stream)."""
    with TestClient(app) as client:
        corpus = upload_corpus(client, alice, corpus_bytes(documents=40, sentences=4))
        assert corpus.status_code == 201, corpus.text
        # 512 positions: a run submitted on it (linked from the checkpoint) takes the default max_seq_length.
        archive = {"file": ("tiny.tar.gz", tar_gz(fake_bert_files(positions=512)))}
        checkpoint = client.post("/v1/checkpoints", files=archive, headers=alice.headers)
        assert checkpoint.status_code == 201, checkpoint.text
        labelled = b"text\tlabel\n" + b"".join(f"text {i}\t{i % 2}\n".encode() for i in range(8))
        dataset = client.post("/v1/datasets", files={"file": ("d.tsv", labelled)}, headers=alice.headers)
        assert dataset.status_code == 201, dataset.text
    corpus_id, started = corpus.json()["id"], datetime.now(UTC) - timedelta(hours=1)
    ended = {"corpus_id": corpus_id, "attempt": 1, "started_at": started, "finished_at": datetime.now(UTC)}
    failed = make_run(session, alice.tenant, status=RunStatus.FAILED, **ended)
    succeeded = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED, **ended)
    succeeded.output_storage_key = f"runs/{succeeded.id}/model"
    write_directory(storage, succeeded.output_storage_key, fake_bert_files())
    for run in (failed, succeeded):
        write_directory(storage, run_checkpoint_key(run.id, STEP), fake_bert_files())
        write_complete_checkpoint(storage, run.id, STEP)  # what a resume continues from
        add_checkpoint_row(session, run, STEP)
        add_event(session, run.id, RunEventType.PREPARING, "preparing", data={"corpus_id": corpus_id})
    insert_metric_points(session, succeeded.id, "train", "loss", noisy_points(range(1, 41)))
    insert_metric_points(session, succeeded.id, "eval", "loss", noisy_points(range(10, 41, 10)))
    for kind in (RunEventType.TRAINING_STARTED, RunEventType.SUCCEEDED):
        add_event(session, succeeded.id, kind, kind.value)
    session.commit()
    analysis = Analysis(
        id=new_id("ana"),
        tenant_id=alice.tenant.id,
        corpus_id=corpus_id,
        base_model=BUILTIN_MODEL,
        tokenizer_key="0" * 64,
        settings_key="0" * 64,
        hyperparameters=Hyperparameters().model_dump(mode="json"),
    )
    session.add(analysis)
    session.commit()
    evaluation = Evaluation(
        id=new_id("eval"),
        tenant_id=alice.tenant.id,
        dataset_id=dataset.json()["id"],
        models=[BUILTIN_MODEL],
        resolved_models=[{"spec": BUILTIN_MODEL, "kind": "builtin"}],
        method="probe",
        seeds=2,
        hyperparameters=EvaluationHyperparameters().model_dump(mode="json"),
        status=EvaluationStatus.CANCELLED,
        progress={},
    )
    session.add(evaluation)
    webhook = Webhook(
        id=new_id("wh"), tenant_id=alice.tenant.id, url="http://127.0.0.1:9/", events=["*"], secret="s"
    )
    session.add(webhook)
    session.commit()
    made = Seeded(
        corpus_id,
        checkpoint.json()["id"],
        dataset.json()["id"],
        succeeded.id,
        failed.id,
        STEP,
        analysis.id,
        evaluation_id=evaluation.id,
        webhook_id=webhook.id,
    )
    publish_seeded_streams(live, made)
    yield made
    delete_streams(live, session, alice)


def publish_seeded_streams(live: redis.Redis, seeded: Seeded) -> None:
    publish(live, seeded.succeeded_run_id, StatusMessage(status=RunStatus.SUCCEEDED))


def delete_streams(live: redis.Redis, session: Session | Connection, who: TenantKey) -> None:
    """The live streams of the tenant's runs (those submitted in the test, and cancelled or resumed)."""
    run_ids = session.scalars(select(Run.id).where(Run.tenant_id == who.tenant.id)).all()
    if run_ids:
        live.delete(*(stream_key(run_id) for run_id in run_ids))


@pytest.fixture
def seeded_state(
    connection: Connection,
    storage: LocalStorage,
    live: redis.Redis,
    alice: TenantKey,
    seeded: Seeded,
) -> Callable[[], Any]:
    """``with seeded_state():`` what the block changes is undone at its end: the rows (a savepoint of the
    test's transaction, which every session of the app joins), the stored files and the live streams."""
    snapshot = storage.root.with_name("seeded-storage")
    shutil.copytree(storage.root, snapshot)

    @contextmanager
    def restored_after() -> Iterator[None]:
        savepoint = connection.begin_nested()
        try:
            yield
        finally:
            delete_streams(live, connection, alice)
            savepoint.rollback()
            shutil.rmtree(storage.root)
            shutil.copytree(snapshot, storage.root)
            publish_seeded_streams(live, seeded)

    return restored_after


def schemathesis_config(seeded: Seeded, key: str) -> schemathesis.Config:
    """Alice's key; the seeded ids drawn for half of the parameters that take one; only the schema's own
    links followed (none inferred), with valid input; a live stream cut after STREAM_SECONDS."""
    half = {"probability": 0.5}
    return schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": key}}},
            "dictionaries": {
                "run_ids": {"values": [seeded.succeeded_run_id, seeded.failed_run_id]},
                "steps": {"values": [seeded.step]},
                "corpus_ids": {"values": [seeded.corpus_id]},
                "checkpoint_ids": {"values": [seeded.checkpoint_id]},
                "dataset_ids": {"values": [seeded.dataset_id]},
                "evaluation_ids": {"values": [seeded.evaluation_id]},
                "analysis_ids": {"values": [seeded.analysis_id]},
                "webhook_ids": {"values": [seeded.webhook_id]},
                "base_models": {
                    "values": [
                        BUILTIN_MODEL,
                        f"checkpoint:{seeded.checkpoint_id}",
                        f"run:{seeded.succeeded_run_id}",
                        f"run:{seeded.succeeded_run_id}@{seeded.step}",
                    ]
                },
            },
            "parameters": {
                "path.run_id": {"dictionary": "run_ids", **half},
                "path.step": {"dictionary": "steps", **half},
                "path.corpus_id": {"dictionary": "corpus_ids", **half},
                "path.checkpoint_id": {"dictionary": "checkpoint_ids", **half},
                "path.dataset_id": {"dictionary": "dataset_ids", **half},
                "path.analysis_id": {"dictionary": "analysis_ids", **half},
                "body.corpus_id": {"dictionary": "corpus_ids", **half},
                "body.base_model": {"dictionary": "base_models", **half},
                "body.dataset_id": {"dictionary": "dataset_ids", **half},
                "path.evaluation_id": {"dictionary": "evaluation_ids", **half},
                "path.webhook_id": {"dictionary": "webhook_ids", **half},
            },
            "phases": {
                "stateful": {
                    "max-steps": STEPS_PER_SCENARIO,
                    "inference": {"algorithms": []},
                    "generation": {"mode": "positive"},
                }
            },
            "operations": [
                {"include-name": "GET /v1/runs/{run_id}/stream", "request-timeout": STREAM_SECONDS},
                {
                    "include-name": [
                        "POST /v1/corpora",
                        "POST /v1/checkpoints",
                        "POST /v1/datasets",
                        "POST /v1/runs",
                        "POST /v1/evaluations",
                        "POST /v1/corpora/{corpus_id}/analyze",
                        "POST /v1/runs/estimate",
                    ],
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_OR_CHECKED}},
                },
            ],
        }
    )


@pytest.fixture
def api_schema(app: FastAPI, alice: TenantKey, seeded: Seeded) -> Iterator[Any]:
    """The app's schema, read from its /openapi.json; calls go to the app in-process."""
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda run_id: None
    app.dependency_overrides[get_analysis_enqueuer] = lambda: lambda analysis_id: None
    app.dependency_overrides[get_evaluation_enqueuer] = lambda: lambda evaluation_id: None
    app.dependency_overrides[get_stream_options] = lambda: StreamOptions(ping_seconds=0.2, block_ms=100)
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis_config(seeded, alice.key))
    shutdown_lifespans()  # schemathesis started the app's lifespan at its first call, and keeps it


# What valid input never gets a 2xx for: files of random bytes are not corpora, checkpoints or labelled
# datasets (uploads of real ones are tested in tests/app/corpora, tests/app/checkpoints, tests/app/datasets),
# and lists of random strings are not model specs (schemathesis's dictionaries hold single values, not the
# lists an evaluation's `models` is; evaluations are submitted in tests/app/evaluations).
NEVER_ACCEPTED = {"POST /v1/corpora", "POST /v1/checkpoints", "POST /v1/datasets", "POST /v1/evaluations"}
# What the scenarios reach through links, each answering 2xx at least once: a run submitted on a corpus
# (POST /v1/runs, linked from the corpora), then every operation on a run (from a submitted run, or from the
# list of runs: the seeded ones).
RUN_SCENARIO_PATHS = r"^/v1/(corpora|checkpoints|models|runs)"
REACHED_BY_LINKS = {
    "POST /v1/runs",
    "GET /v1/runs/{run_id}",
    "POST /v1/runs/{run_id}/cancel",
    "POST /v1/runs/{run_id}/resume",
    "DELETE /v1/runs/{run_id}",
    "GET /v1/runs/{run_id}/metrics",
    "GET /v1/runs/{run_id}/events",
    "GET /v1/runs/{run_id}/stream",
    "GET /v1/runs/{run_id}/checkpoints",
    "GET /v1/runs/{run_id}/model",
}


def test_every_operation_answers_as_its_schema_says(
    api_schema: Any, seeded_state: Callable[[], Any], subtests: Any
) -> None:
    answers = Answers()
    operations = [result.ok() for result in api_schema.get_all_operations()]  # ok(): raises on a bad one
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(msg=f"{operation.label} ({mode.value} input)"):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(BOUNDED, max_examples=MAX_EXAMPLES)
                def call(case: Any) -> None:
                    with seeded_state():
                        response = case.call_and_validate()
                    answers.record(case.operation.label, response.status_code)

                try:
                    call()
                except Unsatisfiable:
                    # Nothing to make invalid (no parameters, or unconstrained ones): no invalid input.
                    if mode is GenerationMode.POSITIVE:
                        raise
    # The seeded resources were reached: every operation succeeded at least once.
    assert answers.succeeded() == {operation.label for operation in operations} - NEVER_ACCEPTED, answers


def test_scenarios_follow_the_links(api_schema: Any, seeded_state: Callable[[], Any]) -> None:
    answers = Answers()

    # The walk covers the resources that lead to runs; with every route in it, the bounded number of
    # scenarios would spread over the others and reach a run's operations only by luck.
    # (Webhooks lead to no run: their links would spread the scenarios too.)
    run_paths = api_schema.include(path_regex=RUN_SCENARIO_PATHS).exclude(
        path_regex=r"/analy[sz]|^/v1/webhooks"
    )

    class Scenarios(run_paths.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.state = ExitStack()
            self.state.enter_context(seeded_state())

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            answers.record(case.operation.label, response.status_code)

        def teardown(self) -> None:
            super().teardown()
            self.state.close()

    Scenarios.run(settings=settings(BOUNDED, max_examples=SCENARIOS, stateful_step_count=STEPS_PER_SCENARIO))
    assert not REACHED_BY_LINKS - answers.succeeded(), answers


def test_options_names_the_methods_the_schema_documents(api_schema: Any, seeded: Seeded) -> None:
    """OPTIONS on each path answers 204 with an Allow header that schemathesis finds true to the schema,
    and a method the path does not have answers 405 naming the same methods."""
    ids = {
        "run_id": seeded.succeeded_run_id,
        "step": seeded.step,
        "corpus_id": seeded.corpus_id,
        "checkpoint_id": seeded.checkpoint_id,
        "dataset_id": seeded.dataset_id,
        "evaluation_id": seeded.evaluation_id,
        "analysis_id": seeded.analysis_id,
        "webhook_id": seeded.webhook_id,
    }
    paths: dict[str, Any] = {}
    for result in api_schema.get_all_operations():
        paths.setdefault(result.ok().path, result.ok())
    for path, operation in paths.items():
        parameters = {name: value for name, value in ids.items() if f"{{{name}}}" in path}
        options = operation.Case(method="OPTIONS", path_parameters=parameters)
        response = options.call()
        assert response.status_code == 204, path
        options.validate_response(response, checks=[allow_header_conformance])
        documented = {method.upper() for method in api_schema.raw_schema["paths"][path]}
        refused = operation.Case(method="PATCH", path_parameters=parameters).call()
        assert refused.status_code == 405, path
        assert set(refused.headers["allow"][0].split(", ")) - {"HEAD", "OPTIONS"} == documented, path
