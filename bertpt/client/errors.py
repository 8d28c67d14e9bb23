"""The one exception of the client: :class:`ApiError`, from the API's error body or from what kept a request
from getting an answer.

The API answers every error with ``{"error": {"type", "message", "param"}}`` (``app.api.schemas.
ErrorResponse``). Something between the client and the API (a proxy's 502 page, a load balancer's 504) may
answer with anything else: that becomes an ApiError too, its type derived from the HTTP status. A request
that got no answer at all (the API down, a DNS name that does not resolve, a timeout) is an ApiError with
``status_code`` 0 whose message names the URL. The client's own checks (a download whose sha256 does not
match, an archive member that would land outside its directory) are ApiErrors with ``status_code`` 0 and
a type of their own. The API key is never part of one: only the method, the URL and the body are read.
"""

from __future__ import annotations

import http
import json
from typing import Any

import httpx
from pydantic import ValidationError

from app.api.error_body import ErrorResponse

__all__ = ["ApiError", "connection_error", "error_from_response", "is_transient"]

# Answers that say "try again later" rather than "this request is wrong": a proxy, or the API restarting.
_TRANSIENT_STATUSES = frozenset({502, 503, 504})
# What no answer at all is (status_code 0): a connect failure, a connection lost, a timeout.
_TRANSIENT_TYPES = frozenset({"connection_error", "connection_lost", "timeout"})
# The longest excerpt of a body that is not the API's error body (a proxy's HTML page) kept in the message.
_EXCERPT_CHARACTERS = 200


class ApiError(Exception):
    """An error from the API, or no answer from it.

    ``status_code``: the HTTP status (0 when no response came: connection refused, timeout; or a check of
    the client's own failed); ``type``: the API's stable machine-readable kind (``not_found``,
    ``validation_error``...; ``connection_error``, ``timeout``, ``checksum_mismatch``, ``unsafe_archive``,
    ``destination_exists`` for the client's own); ``message``: what is wrong and what to do about it;
    ``param``: the request field at fault, if one is; ``retry_after``: the seconds the API asked to wait
    before trying again (its ``Retry-After`` header, with 429 and 503), else None. ``str(error)`` is one
    readable line.
    """

    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        param: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.type = type
        self.message = message
        self.param = param
        self.retry_after = retry_after
        super().__init__(status_code, type, message, param)

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code else ""
        param = f" (param: {self.param})" if self.param else ""
        # One line, whatever the body held.
        return " ".join(f"{status}{self.type}: {self.message}{param}".split())

    def __repr__(self) -> str:
        return (
            f"ApiError(status_code={self.status_code!r}, type={self.type!r}, message={self.message!r}, "
            f"param={self.param!r})"
        )


def error_from_response(response: httpx.Response) -> ApiError:
    """The ApiError of an answer with status >= 400: the API's error body when it is one; otherwise the
    HTTP status's name as the type, and the status phrase, the URL and an excerpt of the body as the
    message. The body must have been read (``response.read()``) first."""
    retry_after = _retry_after(response.headers.get("retry-after"))
    try:
        body: Any = response.json()
        detail = ErrorResponse.model_validate(body).error
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError):
        status = response.status_code
        return ApiError(status, _status_type(status), _not_api_message(response), retry_after=retry_after)
    return ApiError(response.status_code, detail.type, detail.message, detail.param, retry_after=retry_after)


def is_transient(error: ApiError) -> bool:
    """Whether sending the request again may succeed: no answer came (the connection failed or was lost,
    or timed out), or a gateway or the API said it is unavailable for now (502, 503, 504)."""
    if error.status_code == 0:
        return error.type in _TRANSIENT_TYPES
    return error.status_code in _TRANSIENT_STATUSES


def connection_error(exc: httpx.TransportError, url: httpx.URL | str) -> ApiError:
    """The ApiError of a request that got no answer (``status_code`` 0), naming the URL it was sent to
    (without its query string, which may carry an id the user did not type)."""
    where = httpx.URL(str(url)).copy_with(query=None)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return ApiError(0, "timeout", f"no answer from {where} in time ({reason})")
    return ApiError(0, "connection_error", f"cannot reach the API at {where}: {reason}")


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header in its delay form (an HTTP date is not used by the API)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _status_type(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status_code}"


def _status_phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return "HTTP error"


def _not_api_message(response: httpx.Response) -> str:
    """What an answer that is not the API's error body says: who answered it and the start of its text."""
    url = response.request.url.copy_with(query=None)
    message = f"{_status_phrase(response.status_code)} from {response.request.method} {url}"
    try:
        text = " ".join(response.text.split())
    except UnicodeDecodeError:  # pragma: no cover - httpx decodes with replacement characters
        text = ""
    if text:
        excerpt = text[:_EXCERPT_CHARACTERS] + ("..." if len(text) > _EXCERPT_CHARACTERS else "")
        message += f" (not an answer of the bertpt API: {excerpt})"
    return message
