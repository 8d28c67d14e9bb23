"""Downstream evaluations through the whole service: the REST API (in process), a real Celery worker (a
subprocess, on the local Redis, a queue of its own), a fresh PostgreSQL database. A tiny run with
``downstream`` settings succeeds, and the worker then compares its base checkpoint with its final model
on a labelled dataset (a linear probe, 2 seeds); the same comparison asked for with POST /v1/evaluations
gives the same numbers. The fixtures are in conftest.py."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.evaluations.states import TERMINAL_EVALUATION_STATUSES
from app.runs.states import RunStatus
from tests.support import TINY_HYPERPARAMETERS, directory_files, tar_gz, topic_dataset_tsv

if TYPE_CHECKING:
    from tests.e2e.conftest import Poll, Worker

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it

EVALUATION_ENDED = {status.value for status in TERMINAL_EVALUATION_STATUSES}
PROBE = {"method": "probe", "seeds": 2}


def _upload(client: TestClient, headers: dict[str, str], path: str, name: str, content: bytes) -> str:
    response = client.post(path, files={"file": (name, content)}, headers=headers)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def _check_comparison(result: dict[str, Any], models: list[str]) -> None:
    """Per model: 2 per-seed values of each metric, in [0, 1], their mean; against the first model, the
    paired difference over the 2 seeds with its 95% interval around it."""
    assert result["method"] == "probe" and result["seeds"] == [0, 1]
    assert result["labels"] == ["first", "second"] and result["test_examples"] > 0
    assert [model["model"] for model in result["models"]] == models
    for model in result["models"]:
        for metric in ("accuracy", "macro_f1"):
            summary = model[metric]
            assert len(summary["per_seed"]) == 2 and all(0 <= value <= 1 for value in summary["per_seed"])
            assert summary["mean"] == pytest.approx(statistics.mean(summary["per_seed"]))
    baseline, final = result["models"]
    # Each label keeps to its own topic words: even the untrained checkpoint's features tell them apart,
    # where a probe that learnt nothing is right half the time.
    assert baseline["accuracy"]["mean"] > 0.5
    assert baseline["difference_vs_first"] is None
    for metric in ("accuracy", "macro_f1"):
        difference = final["difference_vs_first"][metric]
        paired = [b - a for a, b in zip(baseline[metric]["per_seed"], final[metric]["per_seed"], strict=True)]
        assert difference["n"] == 2 and difference["mean"] == pytest.approx(statistics.mean(paired))
        assert difference["ci_low"] <= difference["mean"] <= difference["ci_high"]


@pytest.mark.timeout(240)
def test_a_run_compared_downstream_with_its_base_model(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    documents: list[list[str]],
    small_corpus: Path,
    tiny_bert_dir: Path,
    wait_for_run: Callable[..., dict[str, Any]],
    assert_run_ended: Callable[..., Any],
    poll: Poll,
) -> None:
    worker = start_worker()
    with TestClient(create_app(settings)) as client:
        archive = tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert"))
        checkpoint_id = _upload(client, headers, "/v1/checkpoints", "tiny-bert.tar.gz", archive)
        corpus_id = _upload(client, headers, "/v1/corpora", "docs.txt", small_corpus.read_bytes())
        dataset_id = _upload(client, headers, "/v1/datasets", "topics.tsv", topic_dataset_tsv(documents))
        body = {
            "base_model": f"checkpoint:{checkpoint_id}",
            "corpus_id": corpus_id,
            "hyperparameters": TINY_HYPERPARAMETERS,
            "downstream": {"dataset_id": dataset_id, **PROBE},
        }
        response = client.post("/v1/runs", json=body, headers=headers)
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]

        run = wait_for_run(
            client, headers, run_id, lambda run: (run["downstream"] or {}).get("status") in EVALUATION_ENDED
        )
        downstream = run["downstream"]
        assert run["status"] == "succeeded" and downstream["status"] == "succeeded", (
            f"{run}\n--- worker log ---\n{worker.log()[-6000:]}"
        )
        assert (downstream["dataset_id"], downstream["method"], downstream["seeds"]) == (
            dataset_id,
            "probe",
            2,
        )
        assert downstream["progress"] == {"done": 4, "total": 4, "model": f"run:{run_id}", "seed": 1}
        models = [f"checkpoint:{checkpoint_id}", f"run:{run_id}"]
        _check_comparison(downstream["result"], models)
        evaluation = client.get(f"/v1/evaluations/{downstream['evaluation_id']}", headers=headers).json()
        assert evaluation["run_id"] == run_id and evaluation["attempt"] == 1
        assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=TINY_HYPERPARAMETERS["max_steps"])

        # The same comparison, asked for directly: the same seeds and split give the same numbers.
        response = client.post(
            "/v1/evaluations", json={"dataset_id": dataset_id, "models": models, **PROBE}, headers=headers
        )
        assert response.status_code == 202, response.text
        evaluation_id = response.json()["id"]

        def ended() -> dict[str, Any] | None:
            answer = client.get(f"/v1/evaluations/{evaluation_id}", headers=headers).json()
            return answer if answer["status"] in EVALUATION_ENDED else None

        evaluation = poll(ended, f"evaluation {evaluation_id} ended", every=0.3)
        assert evaluation["status"] == "succeeded", evaluation
        assert evaluation["run_id"] is None
        _check_comparison(evaluation["result"], models)
        for direct, attached in zip(
            evaluation["result"]["models"], downstream["result"]["models"], strict=True
        ):
            assert direct["accuracy"]["per_seed"] == attached["accuracy"]["per_seed"]
            assert direct["macro_f1"]["per_seed"] == attached["macro_f1"]["per_seed"]
