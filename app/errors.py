"""Domain errors. Services raise these; ``app/api/main.py`` maps them to HTTP statuses in one place.

Each carries a human ``message`` (what is wrong and what to do) and, where one input is to blame,
``param``: the request field that caused it (``"file"``, ``"base_model"``, ``"after"``...).
"""

from __future__ import annotations

__all__ = [
    "AppError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "ValidationFailed",
]


class AppError(Exception):
    """Base of the errors the API reports to its clients; ``code`` is a stable machine-readable name."""

    code = "error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(AppError):
    """The request cannot be read at all (malformed multipart body, wrong content type)."""

    code = "invalid_request"


class Unauthorized(AppError):
    code = "unauthorized"


class NotFound(AppError):
    """No such object *for this tenant*: another tenant's id answers exactly like a missing one."""

    code = "not_found"

    def __init__(self, resource: str, object_id: str, *, param: str | None = None) -> None:
        super().__init__(f"no {resource} with id {object_id!r}", param=param)
        self.resource = resource
        self.object_id = object_id


class Conflict(AppError):
    """The request is valid but clashes with the current state (a corpus still used by a run...)."""

    code = "conflict"


class PayloadTooLarge(AppError):
    """Beyond a size cap; the message names the setting. ``message`` replaces the usual one (a cap that is
    not a number of bytes: the compression ratio)."""

    code = "payload_too_large"

    def __init__(
        self,
        limit: float,
        *,
        param: str | None = None,
        what: str = "upload",
        setting: str = "MAX_UPLOAD_BYTES",
        message: str | None = None,
    ) -> None:
        super().__init__(
            message
            or f"the {what} exceeds the limit of {limit:,} bytes ({setting}); make it smaller or ask the "
            "operator to raise the limit",
            param=param,
        )
        self.limit = limit
        self.setting = setting


class ValidationFailed(AppError):
    """One input is invalid; ``param`` names it."""

    code = "validation_error"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


class TooManyRequests(AppError):
    """This process is busy with as much of this kind of work as it takes at once; ``retry_after`` (seconds)
    goes out as the ``Retry-After`` header."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(AppError):
    """A dependency (database, Redis, broker) cannot be reached right now; retrying later may work."""

    code = "service_unavailable"
