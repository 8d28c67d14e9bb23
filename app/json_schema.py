"""What the JSON schema (and so ``/openapi.json`` and ``/docs``) shows for a value that the service
validates itself rather than pydantic at the edge of the API.

A run's hyperparameters are such a value: the request takes any JSON object, and the submission validates
it with :func:`worker.pretraining.hyperparameters.load_hyperparameters`, whose errors name the field and
the rule (``unknown hyperparameter 'lr' (see ...)``, 422 ``hyperparameters.<field>``), and fill in the
defaults. :class:`DocumentedAs` keeps that, and documents the object with the model that validates it: a
``$ref`` to that model's one definition, with every name, default, range and help text.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = ["DocumentedAs"]


class DocumentedAs:
    """``Annotated[dict[str, Any], DocumentedAs(Model)]``: validated as the dict it is annotated with,
    documented as ``Model`` (a reference to its schema, shared by every field documented so)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_json_schema__(
        self, _schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # generate_inner, not handler(): the model's schema keeps its reference (one component), where
        # handler() would copy it into every field.
        generator: Any = handler.generate_json_schema  # type: ignore[attr-defined]
        schema: JsonSchemaValue = generator.generate_inner(self.model.__pydantic_core_schema__)
        return schema

    def __repr__(self) -> str:
        return f"DocumentedAs({self.model.__name__})"
