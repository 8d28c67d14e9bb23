"""Schemas shared by all routes: the error body, the pagination parameters, JSON responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Response
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

# The error body, defined without FastAPI for the Python client; re-exported for the routes.
from app.api.error_body import ErrorDetail as ErrorDetail
from app.api.error_body import ErrorResponse as ErrorResponse
from app.ids import ID_PATTERN
from app.pagination import CURSOR_PATTERN, ID_CURSOR_PATTERN, MAX_LIMIT

# The query parameters of every list (defaults: ``= DEFAULT_LIMIT`` and ``= ""``). A cursor's pattern is
# declared in the schema and checked by app.pagination with a message of its own: one regular expression.
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
_AFTER = "The next_cursor of the previous page; empty or absent: the first page."
PageAfter = Annotated[str, Query(description=_AFTER, json_schema_extra={"pattern": CURSOR_PATTERN})]
# A list oldest first by id (a run's events).
IdAfter = Annotated[str, Query(description=_AFTER, json_schema_extra={"pattern": ID_CURSOR_PATTERN})]
# Text the database can compare and store: PostgreSQL takes no NUL character. Declared for free-text
# parameters (metric names), so that such a request is refused (422) before a query fails on it.
TEXT_PATTERN = r"^[^\x00]*$"


# Fixed last segments of paths beside a parameter's: POST /v1/runs/estimate beside GET /v1/runs/{run_id}.
FIXED_SEGMENTS = ("estimate",)


class IdConvertor(Convertor[str]):
    """``{name:id}`` in a route's path: any segment but :data:`FIXED_SEGMENTS` (whatever else is not an id
    is still a 422 naming the parameter, by its declared pattern), so that a fixed path beside the route is
    that path's alone: its other methods answer 405 with its own ``Allow``, not a lookup of an id."""

    regex = f"(?!(?:{'|'.join(FIXED_SEGMENTS)})$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


def id_path(description: str) -> Any:
    """A path parameter naming an object by its id (``app.ids.ID_PATTERN``, at most 40 characters):
    anything else names nothing, and is refused (422) as the schema declares."""
    return Path(max_length=40, pattern=ID_PATTERN, description=description)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    descriptions = {
        400: "Malformed request",
        401: "Missing, invalid or revoked API key",
        404: "No such object for this tenant",
        409: "Conflicts with the current state",
        413: "Upload too large",
        422: "Invalid input",
        429: "Too many uploads in progress; retry after Retry-After seconds",
        503: "A dependency is unavailable",
    }
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses}


def json_response(model: BaseModel) -> Response:
    """``model`` as a JSON response, serialized where the route runs. A sync route returning a model has
    FastAPI validate it again in one more worker-thread hop and serialize it on the event loop; the hot
    read routes (polled by every dashboard) return this instead, and keep their ``response_model`` for
    the OpenAPI schema."""
    return Response(model.model_dump_json(), media_type="application/json")
