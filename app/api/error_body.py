"""The API's one error body, ``{"error": {"type", "message", "param"}}``: every 4xx and 5xx answer carries
it (``app/api/main.py`` maps the domain errors of :mod:`app.errors` to it). Free of FastAPI, so that the
Python client (:mod:`bertpt.client`) parses the same definition the API documents."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ErrorDetail", "ErrorResponse"]


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable machine-readable kind of error.", examples=["not_found"])
    message: str = Field(description="What is wrong and what to do about it.")
    param: str | None = Field(description="The request field at fault, if one is.", examples=["file"])


class ErrorResponse(BaseModel):
    error: ErrorDetail
