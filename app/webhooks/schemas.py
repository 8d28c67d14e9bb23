"""API schemas of webhooks: the subscription, its deliveries, and the event body POSTed to the endpoint.

The same models are the Python client's (:mod:`bertpt.client.webhooks`): one definition.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.webhooks.events import EVENT_TYPES, SUBSCRIPTION_PATTERNS, pattern_error

if TYPE_CHECKING:
    from app.models import WebhookDelivery, WebhookMessage

__all__ = [
    "SECRET_PATTERN",
    "SECRET_PREFIX",
    "URL_PATTERN",
    "EvaluationSummary",
    "RunSummary",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookDeliveriesPublic",
    "WebhookDeliveryPublic",
    "WebhookEvent",
    "WebhookPublic",
    "WebhooksPublic",
    "secret_error",
    "url_error",
]

# The rules of a webhook's URL and secret are these two regular expressions, declared in the OpenAPI schema
# and checked by url_error and secret_error (which say what is wrong): what the schema allows, the server
# accepts. Like the schema's, they are read with re.match, so a string may end with one newline (dropped).
MAX_URL_LENGTH = 2000
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_LABEL = "[A-Za-z0-9-]{1,63}"  # a DNS label is 1 to 63 characters (RFC 1035); IDNA refuses longer ones
# http(s)://, a host name or IPv4 address, a port, then any path, query or fragment without spaces or
# control characters. No user name or password (verify deliveries by their signature). Which addresses
# the workers send to is checked when they send (worker.webhooks: WEBHOOK_ALLOW_PRIVATE), against what
# the host resolves to then.
URL_PATTERN = rf"^https?://{_LABEL}(?:\.{_LABEL})*(?::{_PORT})?(?:[/?#][^\s\x00-\x1f\x7f]*)?$"
# Standard Webhooks secrets: "whsec_" + the base64 of the key's bytes, here 24 to 64 of them (k groups of 4
# characters are 3k bytes; a last group "xx==" adds 1 byte, "xxx=" 2).
SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = rf"^whsec_(?:(?:{_B64}{{4}}){{8,21}}(?:{_B64}{{2}}==)?|(?:{_B64}{{4}}){{8,20}}{_B64}{{3}}=)$"


def url_error(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks (it does not match :data:`URL_PATTERN`), or None. Whether
    its host is one the workers may reach is checked at each delivery (``WEBHOOK_ALLOW_PRIVATE``)."""
    if re.match(URL_PATTERN, url):
        return None
    if not re.match(r"^https?://", url):
        return "must be an http:// or https:// URL"
    if "@" in re.split(r"[/?#]", url[url.index("//") + 2 :], maxsplit=1)[0]:
        return "must not carry a user name or password; verify deliveries by their signature instead"
    if re.search(r"[\s\x00-\x1f\x7f]", url):
        return "must not contain spaces or control characters (percent-encode them)"
    return (
        "must be http(s)://host[:port][/path], the host a name (labels of 1 to 63 letters, digits or "
        "hyphens, joined by dots) or an IPv4 address, the port 0 to 65535"
    )


def secret_error(secret: str) -> str | None:
    """Why ``secret`` is not a usable signing secret (it does not match :data:`SECRET_PATTERN`), or None."""
    if re.match(SECRET_PATTERN, secret):
        return None
    return (
        f"must be {SECRET_PREFIX} followed by the base64 (with its = padding) of {SECRET_MIN_BYTES} to "
        f"{SECRET_MAX_BYTES} random bytes; leave it out to have one generated"
    )


class WebhookCreate(BaseModel):
    """A webhook: the endpoint, the events it is sent, and optionally the signing secret."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="Where events are POSTed: an http:// or https:// URL (a host name or IPv4 address).",
        examples=["https://hooks.example.com/bertpt"],
        json_schema_extra={"pattern": URL_PATTERN},
    )
    events: list[str] = Field(
        min_length=1,
        max_length=20,
        description=f"Event types ({', '.join(EVENT_TYPES)}), `<kind>.*` for every type of a kind "
        "(`run.*`, `evaluation.*`), or `*` for all.",
        examples=[["run.succeeded", "run.failed", "run.cancelled", "evaluation.*"]],
        json_schema_extra={"items": {"type": "string", "enum": list(SUBSCRIPTION_PATTERNS)}},
    )
    secret: str | None = Field(
        None,
        max_length=200,
        description=f"The signing secret, {SECRET_PREFIX} + base64 of {SECRET_MIN_BYTES} to "
        f"{SECRET_MAX_BYTES} random bytes; generated when omitted. Returned once, in this response.",
        examples=[None],
        json_schema_extra={"pattern": SECRET_PATTERN},
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if problem := url_error(url):
            raise ValueError(problem)
        return url.removesuffix("\n")

    @field_validator("events")
    @classmethod
    def _check_events(cls, events: list[str]) -> list[str]:
        for pattern in events:
            if problem := pattern_error(pattern):
                raise ValueError(problem)
        return list(dict.fromkeys(events))  # duplicates dropped, order kept

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: str | None) -> str | None:
        if secret is None:
            return None
        if problem := secret_error(secret):
            raise ValueError(problem)
        return secret.removesuffix("\n")


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["wh_Jq8sT2vX0bN4mC6zL1pR9wYe"])
    url: str = Field(examples=["https://hooks.example.com/bertpt"])
    events: list[str] = Field(examples=[["run.succeeded", "run.failed", "run.cancelled", "evaluation.*"]])
    created_at: datetime


class WebhookCreated(WebhookPublic):
    """The new webhook with its signing secret: the only response that shows it."""

    secret: str = Field(
        description="Verify each delivery's webhook-signature with it (bertpt.client.verify_webhook or any "
        "Standard Webhooks library). Shown once: keep it.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class WebhookDeliveryPublic(BaseModel):
    """One attempt at POSTing one event to the webhook's endpoint."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: str = Field(description="The event (its webhook-id header); the same on every attempt.")
    event_type: str = Field(examples=["run.succeeded"])
    attempt: int = Field(description="1 for the first try, then 2, 3... (retried with backoff).")
    outcome: Literal["succeeded", "failed"] = Field(description="succeeded: the endpoint answered 2xx.")
    status_code: int | None = Field(description="The endpoint's HTTP status; null when none came back.")
    error: str | None = Field(description="Why the attempt failed (connection refused, timeout, status).")
    duration_ms: float = Field(description="From sending the request to the end of the response.")
    created_at: datetime = Field(description="When the attempt was made.")
    next_attempt_at: datetime | None = Field(
        description="When the event is retried after this failed attempt; null when it succeeded or was "
        "the last attempt (the event is then given up)."
    )

    @classmethod
    def from_attempt(cls, delivery: WebhookDelivery, message: WebhookMessage) -> WebhookDeliveryPublic:
        return cls(
            id=delivery.id,
            event_id=message.id,
            event_type=message.event_type,
            attempt=delivery.attempt,
            outcome=delivery.outcome.value,
            status_code=delivery.status_code,
            error=delivery.error,
            duration_ms=delivery.duration_ms,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at,
        )


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class RunSummary(BaseModel):
    """A run as a webhook event reports it: where it ended and with which metrics."""

    id: str
    name: str
    status: str = Field(examples=["succeeded"])
    base_model: str
    step: int | None = Field(description="Optimizer steps done.")
    total_steps: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    baseline: dict[str, Any] = Field(description="Evaluation metrics of the base model, before training.")
    final: dict[str, Any] = Field(description="The last evaluation's metrics (empty when it made none).")
    error: dict[str, Any] | None = Field(description="Why it failed ({type, message, ...}), else null.")
    links: dict[str, str] = Field(
        description="URLs of the run, its metrics and (succeeded) its model; relative to the API unless "
        "the service's PUBLIC_URL is set.",
        examples=[
            {"run": "/v1/runs/run_x", "metrics": "/v1/runs/run_x/metrics", "model": "/v1/runs/run_x/model"}
        ],
    )


class EvaluationSummary(BaseModel):
    """An evaluation as a webhook event reports it."""

    id: str
    status: str = Field(examples=["succeeded"])
    method: str
    models: list[str]
    run_id: str | None = Field(description="The run it is the downstream comparison of, if any.")
    created_at: datetime
    finished_at: datetime | None
    result: dict[str, Any] | None = Field(description="The comparison (succeeded), else null.")
    error: dict[str, Any] | None
    links: dict[str, str]


class WebhookEvent(BaseModel):
    """The JSON body POSTed to the endpoint (Standard Webhooks' ``{type, timestamp, data}``); its id is
    the ``webhook-id`` header."""

    type: str = Field(examples=["run.succeeded"])
    timestamp: datetime = Field(description="When the status changed.")
    data: dict[str, Any] = Field(description="A RunSummary (run.*) or an EvaluationSummary (evaluation.*).")
