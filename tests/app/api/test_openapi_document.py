"""The API describes itself (/openapi.json, read by /docs and by clients): every operation has a summary,
examples of its request body and of its JSON answers, and its error responses documented with an example of
the one error body; every example is valid against its schema; the hyperparameters' names, defaults, ranges
and help texts are those of their one definition (worker/pretraining/hyperparameters.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tests.support import TenantKey
from worker.pretraining.hyperparameters import Hyperparameters

METHODS = ("get", "put", "post", "delete", "patch")
# Probes that take no input and no key: nothing a client sends can make them answer 4xx.
NO_CLIENT_ERRORS = {("get", "/healthz"), ("get", "/metrics"), ("get", "/readyz")}


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def examples_of(spec: dict[str, Any], media: dict[str, Any]) -> list[Any]:
    """The examples a reader of the document sees for a body: the media type's own, else its schema's
    (for a list, its items')."""
    if "example" in media:
        return [media["example"]]
    if "examples" in media:
        return [example["value"] for example in media["examples"].values()]
    schema = resolve(spec, media.get("schema", {}))
    if schema.get("type") == "array":
        items = resolve(spec, schema.get("items", {}))
        return [[example] for example in items.get("examples", [])]
    return list(schema.get("examples", []))


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator of ``schema`` whose references resolve in the document."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})


def unknown_fields(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """The fields of ``value`` that ``schema`` does not name (an example older than its schema): a JSON
    schema of pydantic's allows them unless it forbids extra fields, so validation alone would not tell."""
    schema = resolve(spec, schema)
    if "anyOf" in schema:
        return min((unknown_fields(spec, s, value, where) for s in schema["anyOf"]), key=len)
    if isinstance(value, dict) and "properties" in schema:
        found = []
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(spec, schema["properties"][key], item, f"{where}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{where}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [name for item in value for name in unknown_fields(spec, schema["items"], item, f"{where}[]")]
    return []


def assert_valid(spec: dict[str, Any], schema: dict[str, Any], example: Any, what: str) -> None:
    errors = [error.message for error in validator(spec, schema).iter_errors(example)]
    assert not errors, f"{what}: {errors[:3]}"
    assert not unknown_fields(spec, schema, example), f"{what}: {unknown_fields(spec, schema, example)}"


def test_an_invalid_or_stale_example_is_told(spec: dict[str, Any]) -> None:
    """The checks below catch a wrong value and a field the schema lost."""
    run = {"$ref": "#/components/schemas/RunPublic"}
    (example,) = resolve(spec, run)["examples"]
    assert_valid(spec, run, example, "the run's example")
    assert not validator(spec, run).is_valid({**example, "status": "paused"})
    assert unknown_fields(spec, run, {**example, "progress": {**example["progress"], "speed": 1}}) == [
        ".progress.speed"
    ]


def test_every_operation_has_a_summary(spec: dict[str, Any]) -> None:
    missing = [f"{method.upper()} {path}" for method, path, op in operations(spec) if not op.get("summary")]
    assert not missing


def test_every_request_body_has_a_valid_example(spec: dict[str, Any]) -> None:
    seen = 0
    for method, path, op in operations(spec):
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            examples = examples_of(spec, media)
            assert examples, f"{method.upper()} {path} {media_type}: no example"
            for example in examples:
                assert_valid(spec, media["schema"], example, f"{method.upper()} {path} {media_type}")
            seen += 1
    assert seen >= 8  # runs, estimate, analyses, evaluations, uploads...


def test_every_json_answer_has_a_valid_example(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            media = response.get("content", {}).get("application/json")
            if media is None or "schema" not in media:
                continue
            examples = examples_of(spec, media)
            assert examples, f"{method.upper()} {path} {status}: no example"
            for example in examples:
                assert_valid(spec, media["schema"], example, f"{method.upper()} {path} {status}")


def test_every_operation_documents_its_client_errors(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        if (method, path) in NO_CLIENT_ERRORS:
            continue
        client_errors = {status: r for status, r in op["responses"].items() if status.startswith("4")}
        assert client_errors, f"{method.upper()} {path}: no 4xx documented"
        if path.startswith("/v1/"):
            assert "401" in client_errors, f"{method.upper()} {path}"  # every /v1 route takes a key
        for response in client_errors.values():
            example = response["content"]["application/json"]["example"]
            assert set(example) == {"error"} and set(example["error"]) == {"type", "message", "param"}


def test_the_error_examples_are_what_the_api_answers(
    client: TestClient, alice: TenantKey, spec: dict[str, Any]
) -> None:
    """The documented 401 and 404 of a run are what a request without a key, and one for a run that does
    not exist, get."""
    documented = spec["paths"]["/v1/runs/{run_id}"]["get"]["responses"]
    run_id = "run_Jq8sT2vX0bN4mC6zL1pR9wYe"  # the id of the examples
    answers = {
        "401": client.get(f"/v1/runs/{run_id}"),
        "404": client.get(f"/v1/runs/{run_id}", headers=alice.headers),
    }
    for status, answer in answers.items():
        assert str(answer.status_code) == status
        assert answer.json() == documented[status]["content"]["application/json"]["example"]


def test_the_hyperparameters_are_documented_from_their_one_definition(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for body in ("RunCreate", "AnalyzeRequest", "RunPublic"):
        field = schemas[body]["properties"]["hyperparameters"]
        assert field["$ref"] == "#/components/schemas/Hyperparameters", body
    documented = schemas["Hyperparameters"]
    assert documented["additionalProperties"] is False  # unknown names are refused
    learning_rate = documented["properties"]["learning_rate"]
    assert learning_rate["default"] == 5e-5
    assert learning_rate["exclusiveMinimum"] == 0.0 and learning_rate["maximum"] == 1.0
    assert "Peak AdamW learning rate" in learning_rate["description"]
    assert documented["properties"]["batch_size"]["minimum"] == 1
    assert documented["properties"]["lr_scheduler"]["enum"] == ["linear", "cosine", "constant_with_warmup"]
    # Every field, with the default and the help of the one definition: derived, not copied.
    assert set(documented["properties"]) == set(Hyperparameters.model_fields)
    for name, field in Hyperparameters.model_fields.items():
        assert documented["properties"][name]["description"] == field.description, name
        if field.default is not None:
            assert documented["properties"][name]["default"] == field.default, name


def test_the_documented_hyperparameters_take_what_a_run_echoes_and_refuse_the_rest(
    spec: dict[str, Any],
) -> None:
    """Every hyperparameter with its default (what a run echoes) is valid against the documented schema;
    an unknown name or a value out of range is not, as the submission refuses them."""
    check = validator(spec, {"$ref": "#/components/schemas/Hyperparameters"})
    assert check.is_valid(Hyperparameters().model_dump(mode="json"))
    assert not check.is_valid({"lr": 1e-4})  # an unknown name
    assert not check.is_valid({"learning_rate": 0})  # out of range
