"""Examples in the OpenAPI document (``/openapi.json``, ``/docs``): a whole request body or answer of each
schema, as the API takes and gives them, and an error body for each error status.

Declared here as tables, like :mod:`app.api.openapi_links`, and added to the schema FastAPI generates
(``add_examples``, installed by ``create_app`` through ``use_openapi_examples``): a schema's example is
written once, and each list page shows its item's. ``tests/app/api/test_openapi_document.py`` checks that
every request body and JSON answer has one and that each is valid against its schema, so a field renamed or
added without its example fails there. Hyperparameters are dumped from their one definition, never
written out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from app.errors import NotFound, PayloadTooLarge
from worker.evaluation.settings import EvaluationHyperparameters
from worker.pretraining.hyperparameters import Hyperparameters

__all__ = ["ERROR_EXAMPLES", "MULTIPART_EXAMPLES", "SCHEMA_EXAMPLES", "add_examples", "use_openapi_examples"]

RUN_ID = "run_Jq8sT2vX0bN4mC6zL1pR9wYe"
CORPUS_ID = "corp_0bARlxCQapst3RXho8vYsq4w"
REFERENCE_ID = "corp_Wk2mP9sLq0ZxR4tNb7YcA1eD"
CHECKPOINT_ID = "ckpt_fWvL3sRWNgCYcYTuNHuoSbfq"
DATASET_ID = "ds_Vn3kE0aZ2sC1mXy8QpLr7tUw"
EVALUATION_ID = "eval_Vn3kE0aZ2sC1mXy8QpLr7tUw"
ANALYSIS_ID = "ana_iH4Qy81RHvYkeZWKZzESobJq"
BUILTIN = "minilm-l6-h384-uncased"
CREATED = "2026-03-02T09:14:07.512Z"
STARTED = "2026-03-02T09:14:31.020Z"

_RUN_HYPERPARAMETERS = Hyperparameters(
    max_steps=2000, learning_rate=3e-5, eval_every_steps=250, lr_scheduler="cosine", min_lr_ratio=0.1
).model_dump(mode="json")
_MINILM_CONFIG = {
    "model_type": "bert",
    "hidden_size": 384,
    "layers": 6,
    "heads": 12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "architectures": ["BertModel"],
}
_EVAL_METRICS = {"masked_lm_loss": 2.412, "masked_lm_accuracy": 0.561, "perplexity": 11.16}

_CORPUS = {
    "id": CORPUS_ID,
    "name": "pubmed-abstracts",
    "filename": "pubmed-abstracts.txt.gz",
    "bytes": 48213377,
    "sha256": "c87d29cb553815f0021de9f6a41e2ecb16ad12bd8b847596e850f0409ed7bdff",
    "documents": 120000,
    "sentences": 1184522,
    "stats": {
        "characters": 151209447,
        "sentences_per_document": {
            "min": 1,
            "max": 61,
            "mean": 9.87,
            "median": 9.0,
            "p90": 15,
            "histogram": {"1": 212, "2": 1530, "3-4": 8940, "5-8": 38210, "9-16": 61002, "17+": 10106},
        },
    },
    "warnings": [],
    "created_at": CREATED,
}
_CHECKPOINT = {
    "id": CHECKPOINT_ID,
    "name": "bert-base-uncased",
    "config": {
        "model_type": "bert",
        "hidden_size": 768,
        "layers": 12,
        "heads": 12,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "architectures": ["BertForPreTraining"],
    },
    "has_pretraining_heads": True,
    "parameters": 110106428,
    "bytes": 440473133,
    "sha256": "4846b67b37d5811ac971dc207cbab593fcff0d3779686232e1c93fa28f095afc",
    "created_at": CREATED,
}
_DATASET = {
    "id": DATASET_ID,
    "name": "adverse-events",
    "filename": "adverse-events.tsv",
    "format": "tsv",
    "bytes": 381204,
    "sha256": "fd41cc3f05112c10e081f81bbf1dbe76bcce42d9eb2ba09ce427156140eb8c9d",
    "examples": 2400,
    "labels": [
        {"label": "adverse", "examples": 1180, "test_examples": 290},
        {"label": "none", "examples": 1220, "test_examples": 310},
    ],
    "has_text_pair": False,
    "has_test_file": True,
    "test_filename": "adverse-events-test.tsv",
    "test_format": "tsv",
    "test_bytes": 95410,
    "test_examples": 600,
    "ignored_columns": [],
    "created_at": CREATED,
}
_RUN: dict[str, Any] = {
    "id": RUN_ID,
    "name": "minilm-l6-h384-uncased on pubmed-abstracts",
    "status": "running",
    "base_model": BUILTIN,
    "corpus_id": CORPUS_ID,
    "eval_corpus_id": None,
    "reference_corpus_id": REFERENCE_ID,
    "replay_corpus_id": None,
    "hyperparameters": _RUN_HYPERPARAMETERS,
    "created_at": CREATED,
    "started_at": STARTED,
    "finished_at": None,
    "progress": {
        "step": 750,
        "total_steps": 2000,
        "epoch": 0.4,
        "tokens_seen": 2895360,
        "tokens_per_second": 3861.2,
        "samples_per_second": 31.7,
        "mfu": None,
        "eta_seconds": 1012.5,
        "skipped_steps": 0,
    },
    "latest": {
        "train": {
            "loss": 2.911,
            "masked_lm_loss": 2.487,
            "masked_lm_accuracy": 0.552,
            "next_sentence_loss": 0.424,
            "next_sentence_accuracy": 0.81,
            "learning_rate": 2.61e-05,
            "grad_norm": 1.93,
            "tokens_per_second": 3861.2,
            "samples_per_second": 31.7,
            "samples_seen": 24000,
            "epoch": 0.4,
            "skipped_steps": 0,
            "step": 750,
        },
        "eval": {**_EVAL_METRICS, "next_sentence_loss": 0.401, "next_sentence_accuracy": 0.83, "step": 750},
    },
    "baseline": {
        "eval": {"masked_lm_loss": 3.106, "masked_lm_accuracy": 0.468, "perplexity": 22.33, "step": 0},
        "reference": {"masked_lm_loss": 2.204, "masked_lm_accuracy": 0.589, "perplexity": 9.06, "step": 0},
    },
    "warnings": [],
    "error": None,
    "metadata": {"project": "pharmacovigilance"},
    "attempt": 1,
    "cancel_requested": False,
    "selected_checkpoint": None,
    "stopped_early": None,
    "vocabulary": None,
    "downstream": None,
    "resources": {"class": "gpu", "devices": 1},
    "queue": "training.gpu",
    "waiting_reason": None,
    "eta_seconds": 1012.5,
}
_EVALUATION = {
    "id": EVALUATION_ID,
    "status": "running",
    "dataset_id": DATASET_ID,
    "run_id": None,
    "models": [BUILTIN, f"run:{RUN_ID}"],
    "resolved_models": [{"spec": BUILTIN, "kind": "builtin"}, {"spec": f"run:{RUN_ID}", "kind": "run"}],
    "method": "probe",
    "seeds": 5,
    "hyperparameters": EvaluationHyperparameters().model_dump(mode="json"),
    "progress": {"done": 3, "total": 10, "model": BUILTIN, "seed": 3},
    "result": None,
    "error": None,
    "attempt": 1,
    "created_at": CREATED,
    "started_at": STARTED,
    "finished_at": None,
}
_ESTIMATE = {
    "exact": False,
    "analysis_id": None,
    "train_instances": 41290,
    "steps_per_epoch": 1291,
    "epochs": 1.549,
    "steps": 2000,
    "tokens_per_step": 3861.6,
    "tokens": 7723200,
    "evaluations": 9,
    "evaluation_tokens": 254310,
    "throughput": {
        "tokens_per_second": 3861.2,
        "source": "measured",
        "runs": 3,
        "device": "cpu",
        "model": "6x384",
        "max_seq_length": 128,
    },
    "seconds_per_step": 1.0,
    "training_seconds": 2000.0,
    "evaluation_seconds": 592.8,
    "startup_seconds": 20.0,
    "startup_source": "default",
    "total_seconds": 2612.8,
    "queue": {"runs": 1, "wait_seconds": 1012.5, "workers": 1, "workers_known": True},
    "eta_seconds": 3625.3,
}
_ANALYSIS = {
    "id": ANALYSIS_ID,
    "corpus_id": CORPUS_ID,
    "base_model": BUILTIN,
    "status": "queued",
    "preparation": Hyperparameters().preparation().model_dump(mode="json"),
    "analysis": None,
    "error": None,
    "created_at": CREATED,
    "started_at": None,
    "finished_at": None,
}
_BASE_MODEL = {
    "id": BUILTIN,
    "kind": "builtin",
    "name": BUILTIN,
    "description": "all-MiniLM-L6-v2 (sentence-transformers): a 6-layer, 384-wide uncased BERT encoder "
    "(22.7M parameters) without pre-training heads; the heads start from random values.",
    "available": True,
    "config": _MINILM_CONFIG,
    "has_pretraining_heads": False,
    "parameters": 22713728,
    "created_at": None,
    "steps": [],
}
_EVENT = {
    "id": 7,
    "created_at": STARTED,
    "level": "info",
    "type": "evaluation",
    "message": "baseline reference at step 0: masked_lm_loss 2.204, masked_lm_accuracy 0.589",
    "data": {
        "split": "reference",
        "step": 0,
        "metrics": {"masked_lm_loss": 2.204, "masked_lm_accuracy": 0.589, "perplexity": 9.06},
        "baseline": True,
    },
}
_RUN_CHECKPOINT = {
    "step": 500,
    "created_at": STARTED,
    "metrics": {"eval": {**_EVAL_METRICS, "step": 500}},
    "size_bytes": 275114983,
    "sha256": "9f2c4e1a7d3b5c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a",
}
_WEBHOOK = {
    "id": "wh_Jq8sT2vX0bN4mC6zL1pR9wYe",
    "url": "https://hooks.example.com/bertpt",
    "events": ["run.succeeded", "run.failed", "run.cancelled", "evaluation.*"],
    "created_at": CREATED,
}
_DELIVERY = {
    "id": 12,
    "event_id": "msg_2Yc8PqL0sT4vX9nB1mZ7wRkA",
    "event_type": "run.succeeded",
    "attempt": 2,
    "outcome": "succeeded",
    "status_code": 204,
    "error": None,
    "duration_ms": 41.7,
    "created_at": STARTED,
    "next_attempt_at": None,
}


def _page(item: dict[str, Any], next_cursor: str | None = None) -> dict[str, Any]:
    return {"data": [item], "next_cursor": next_cursor}


# Component schema -> one whole example of it (requests and answers).
SCHEMA_EXAMPLES: dict[str, Any] = {
    "Health": {"status": "ok"},
    "Readiness": {"status": "ok", "checks": {"database": "ok", "redis": "ok"}, "error": None},
    "RunCreate": {
        "name": "minilm on pubmed, lr 3e-5",
        "base_model": BUILTIN,
        "corpus_id": CORPUS_ID,
        "reference_corpus_id": REFERENCE_ID,
        "hyperparameters": {"max_steps": 2000, "learning_rate": 3e-5, "eval_every_steps": 250},
        "metadata": {"project": "pharmacovigilance"},
    },
    "AnalyzeRequest": {"base_model": BUILTIN, "hyperparameters": {"max_seq_length": 128, "num_epochs": 1}},
    "EvaluationCreate": {
        "dataset_id": DATASET_ID,
        "models": [BUILTIN, f"run:{RUN_ID}"],
        "method": "probe",
        "seeds": 5,
    },
    "CorpusPublic": _CORPUS,
    "CorporaPublic": _page(_CORPUS),
    "CheckpointPublic": _CHECKPOINT,
    "CheckpointUploadPublic": {**_CHECKPOINT, "warnings": []},
    "CheckpointsPublic": _page(_CHECKPOINT),
    "DatasetPublic": _DATASET,
    "DatasetsPublic": _page(_DATASET),
    "BaseModelsPublic": {"data": [_BASE_MODEL]},
    "AnalysisPublic": _ANALYSIS,
    "RunEstimate": _ESTIMATE,
    "RunPublic": _RUN,
    "RunsPublic": _page(_RUN, next_cursor="MjAyNi0wMy0wMlQwOToxNDowNy41MTJafHJ1bl9KcTg"),
    "MetricsPublic": {
        "series": [
            {"name": "loss", "split": "train", "points": [[10, 3.402], [20, 3.217], [30, None], [40, 3.05]]},
            {"name": "masked_lm_loss", "split": "eval", "points": [[0, 3.106], [250, 2.61], [500, 2.48]]},
            {
                "name": "masked_lm_loss",
                "split": "reference",
                "points": [[0, 2.204], [250, 2.231], [500, 2.25]],
            },
        ]
    },
    "RunEventPublic": _EVENT,
    "RunEventsPublic": _page(_EVENT),
    "RunCheckpointPublic": _RUN_CHECKPOINT,
    "EvaluationPublic": _EVALUATION,
    "EvaluationsPublic": _page(_EVALUATION),
    "WebhookCreate": {"url": "https://hooks.example.com/bertpt", "events": ["run.*", "evaluation.succeeded"]},
    "WebhookPublic": _WEBHOOK,
    "WebhookCreated": {**_WEBHOOK, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    "WebhooksPublic": _page(_WEBHOOK),
    "WebhookDeliveriesPublic": _page(_DELIVERY),
}

# Media type examples of request bodies that are not a component (the multipart uploads), by operation.
MULTIPART_EXAMPLES: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/corpora"): {
        "file": "Aspirin irreversibly inhibits cyclooxygenase-1.\nIt reduces platelet aggregation.\n\n"
        "Metformin lowers hepatic glucose output.\nIt is the first-line treatment of type 2 diabetes.\n",
        "name": "pubmed-abstracts",
    },
    ("post", "/v1/datasets"): {
        "file": "text\tlabel\nSevere rash after the second dose.\tadverse\n"
        "No change in blood pressure.\tnone\n",
        "name": "adverse-events",
    },
    ("post", "/v1/checkpoints"): {
        "file": "(the bytes of bert-base-uncased.tar.gz)",
        "name": "bert-base-uncased",
    },
}


def _error(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "param": param}}


# Status -> the error body of a typical refusal with that status.
ERROR_EXAMPLES: dict[str, dict[str, Any]] = {
    "400": _error("invalid_request", "the multipart body ended inside the file part"),
    "401": _error("unauthorized", "missing API key: send the header 'Authorization: Bearer <key>'"),
    "404": _error("not_found", NotFound("run", RUN_ID).message),
    "409": _error(
        "conflict",
        f"corpus {CORPUS_ID!r} is used by active run(s) {RUN_ID}; cancel them or wait for them to finish, "
        "then delete it",
    ),
    "413": _error("payload_too_large", PayloadTooLarge(2147483648).message, "file"),
    "416": _error("range_not_satisfiable", "the range is outside the 275114983-byte file", "Range"),
    "422": _error(
        "validation_error",
        "invalid hyperparameters: learning_rate: Input should be greater than 0",
        "hyperparameters.learning_rate",
    ),
    "429": _error(
        "too_many_requests",
        "this server is already receiving 4 upload(s), as many as it takes at once (MAX_CONCURRENT_UPLOADS); "
        "retry in 5 seconds",
    ),
    "503": _error("service_unavailable", "the server is shutting down; upload again in a moment"),
}
_ERROR_SCHEMA = "#/components/schemas/ErrorResponse"


def add_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document as FastAPI generates it) with the examples of the tables added, in
    place. KeyError for a table entry that names no component or operation (the table must stay true)."""
    components: dict[str, Any] = schema["components"]["schemas"]
    for name, example in SCHEMA_EXAMPLES.items():
        if name not in components:
            raise KeyError(f"SCHEMA_EXAMPLES names {name!r}, which the document has no schema for")
        components[name]["examples"] = [example]
    for (method, path), example in MULTIPART_EXAMPLES.items():
        body = schema["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]
        body["example"] = example
    for item in schema["paths"].values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                media = response.get("content", {}).get("application/json", {})
                if media.get("schema", {}).get("$ref") == _ERROR_SCHEMA and status in ERROR_EXAMPLES:
                    media["example"] = ERROR_EXAMPLES[status]
    return schema


def use_openapi_examples(app: FastAPI) -> None:
    """Serve ``app``'s schema with the examples added (after :func:`app.api.openapi_links.use_openapi_links`,
    which it wraps; FastAPI caches the schema once built)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_examples(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
