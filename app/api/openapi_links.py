"""OpenAPI links: which value of a response other operations take (the ``id`` a ``POST /v1/runs`` answers
with is the ``run_id`` of ``GET /v1/runs/{run_id}``, of its metrics, its cancel...). Clients and generated
documentation read them; schemathesis's stateful tests follow them from one call to the next.

They are declared here, as one table, and added to the schema FastAPI generates (``add_links``; installed by
``create_app`` through ``use_openapi_links``) rather than spread over the routes' decorators: a resource's
answers are listed once, and every operation whose only path parameter is that resource's id is linked
from each of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

__all__ = ["BODY_FIELDS", "RESOURCES", "Answer", "add_links", "use_openapi_links"]


@dataclass(frozen=True)
class Answer:
    """A response naming a resource: its operation, statuses, and the JSON pointer to the id in its body."""

    method: str
    path: str
    statuses: tuple[str, ...]
    pointer: str


# Each resource's path parameter and the responses that carry one. A list answers with its newest item first.
RESOURCES: dict[str, tuple[Answer, ...]] = {
    "run_id": (
        Answer("POST", "/v1/runs", ("201", "200"), "/id"),
        Answer("GET", "/v1/runs", ("200",), "/data/0/id"),
        Answer("GET", "/v1/runs/{run_id}", ("200",), "/id"),
        Answer("POST", "/v1/runs/{run_id}/cancel", ("200",), "/id"),
        Answer("POST", "/v1/runs/{run_id}/resume", ("202",), "/id"),
    ),
    "corpus_id": (
        Answer("POST", "/v1/corpora", ("201", "200"), "/id"),
        Answer("GET", "/v1/corpora", ("200",), "/data/0/id"),
    ),
    "checkpoint_id": (
        Answer("POST", "/v1/checkpoints", ("201",), "/id"),
        Answer("GET", "/v1/checkpoints", ("200",), "/data/0/id"),
    ),
    "dataset_id": (
        Answer("POST", "/v1/datasets", ("201", "200"), "/id"),
        Answer("GET", "/v1/datasets", ("200",), "/data/0/id"),
    ),
    "evaluation_id": (
        Answer("POST", "/v1/evaluations", ("202",), "/id"),
        Answer("GET", "/v1/evaluations", ("200",), "/data/0/id"),
        Answer("GET", "/v1/evaluations/{evaluation_id}", ("200",), "/id"),
        Answer("POST", "/v1/evaluations/{evaluation_id}/cancel", ("200",), "/id"),
    ),
    "webhook_id": (
        Answer("POST", "/v1/webhooks", ("201",), "/id"),
        Answer("GET", "/v1/webhooks", ("200",), "/data/0/id"),
        Answer("GET", "/v1/webhooks/{webhook_id}", ("200",), "/id"),
    ),
}

# The request bodies that take a resource's id: (method, path, field, what precedes the id in the field). The
# link's body names only that field (the rest is the client's to choose; schemathesis merges it into the body
# it generates).
BODY_FIELDS: dict[str, tuple[str, str, str, str]] = {
    "corpus_id": ("POST", "/v1/runs", "corpus_id", ""),
    "checkpoint_id": ("POST", "/v1/runs", "base_model", "checkpoint:"),
}

# A run's kept checkpoints (by step) -> the download of the first one.
_RUN_CHECKPOINTS = ("/v1/runs/{run_id}/checkpoints", "/v1/runs/{run_id}/checkpoints/{step}/download")

_PATH_PARAMETER = re.compile(r"{([^}]+)}")


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document as FastAPI generates it) with the links of :data:`RESOURCES` and
    :data:`BODY_FIELDS` added to its responses, and those from a run's checkpoints to their download, in
    place; each link is named after its target's operationId."""
    paths: dict[str, dict[str, Any]] = schema["paths"]
    for parameter, answers in RESOURCES.items():
        targets = [
            (path, method)
            for path, item in paths.items()
            if set(_PATH_PARAMETER.findall(path)) == {parameter}
            for method in item
        ]
        for answer in answers:
            source = paths[answer.path][answer.method.lower()]
            expression = f"$response.body#{answer.pointer}"
            for status in answer.statuses:
                for path, method in targets:
                    if (path, method) != (answer.path, answer.method.lower()):
                        _link(source, status, paths[path][method], parameters={parameter: expression})
                if parameter in BODY_FIELDS:
                    body_method, body_path, field, prefix = BODY_FIELDS[parameter]
                    # An expression inside a string is written in braces (OpenAPI's runtime expressions).
                    value = f"{prefix}{{{expression}}}" if prefix else expression
                    _link(source, status, paths[body_path][body_method.lower()], body={field: value})
    listing, download = _RUN_CHECKPOINTS
    parameters = {"run_id": "$request.path.run_id", "step": "$response.body#/0/step"}
    _link(paths[listing]["get"], "200", paths[download]["get"], parameters=parameters)
    return schema


def use_openapi_links(app: FastAPI) -> None:
    """Serve ``app``'s schema (``/openapi.json``, ``/docs``) with the links added (once: FastAPI caches
    the schema it generates)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_links(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def _link(
    source: dict[str, Any],
    status: str,
    target: dict[str, Any],
    *,
    parameters: dict[str, str] | None = None,
    body: dict[str, str] | None = None,
) -> None:
    operation_id = target["operationId"]
    link: dict[str, Any] = {"operationId": operation_id}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    source["responses"][status].setdefault("links", {})[operation_id] = link
