"""The live path of a run: one Redis stream per run, written by the worker, read by the API's SSE route.

The database is the truth (metrics, events, status); the stream only carries the same facts to
watchers with low latency, so losing it loses nothing that cannot be read back from SQL. The worker
publishes after the matching rows are committed: a client that sees a message can find its rows.

Each message has two fields: ``type`` and ``data`` (a JSON object):

- ``metric``: a metrics record of the training library, ``{"split", "step", "metrics": {...}}``;
- ``status``: ``{"status": <RunStatus value>, "progress": {...}, "error": {...} | null}`` on every
  transition and, while running, at most about once a second with the progress;
- ``event``: a lifecycle event as stored in ``run_events``, ``{"id", "type", "level", "message",
  "data", "created_at"}``;
- ``checkpoint``: a kept checkpoint, ``{"step", "metrics", "size_bytes", "sha256"}``.

A stream ends with a ``status`` message whose status is terminal (succeeded, failed, cancelled).
Streams are capped (about :data:`STREAM_MAXLEN` messages, oldest dropped first) and expire
:data:`STREAM_TTL_SECONDS` after their last message.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import redis

from app.models import RunEvent

__all__ = [
    "MESSAGE_TYPES",
    "STREAM_MAXLEN",
    "STREAM_TTL_SECONDS",
    "LiveMessage",
    "MessageType",
    "create_redis",
    "event_data",
    "json_safe",
    "publish",
    "read_since",
    "stream_key",
]

MessageType = Literal["metric", "status", "event", "checkpoint"]
MESSAGE_TYPES: frozenset[str] = frozenset({"metric", "status", "event", "checkpoint"})
# A metric record every logging step plus evaluations: 200k messages cover a very long run; trimming
# is approximate (~), which lets Redis drop whole internal nodes cheaply.
STREAM_MAXLEN = 200_000
# Long enough for a client to look at a finished run's stream; refreshed by every message, so a
# running run's stream never expires while it is still being written.
STREAM_TTL_SECONDS = 7 * 24 * 3600

LiveMessage = tuple[str, str, dict[str, Any]]  # (stream id, type, data)


def stream_key(run_id: str) -> str:
    return f"bertpt:run:{run_id}:stream"


def event_data(event: RunEvent) -> dict[str, Any]:
    """The ``data`` of an ``event`` message: the stored row."""
    return {
        "id": event.id,
        "type": event.type,
        "level": event.level,
        "message": event.message,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
    }


def create_redis(url: str, *, socket_timeout: float | None = 30.0) -> redis.Redis:
    """A synchronous client for ``url`` that returns strings. ``socket_timeout`` must exceed the longest
    ``block_ms`` given to :func:`read_since`."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers; PostgreSQL's JSONB and
    browsers refuse them), recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def publish(client: redis.Redis, run_id: str, type: MessageType, data: dict[str, Any]) -> str:
    """Append one message to the run's stream and (re)set the stream's expiry; returns the message id."""
    if type not in MESSAGE_TYPES:
        raise ValueError(f"unknown live message type {type!r}")
    key = stream_key(run_id)
    payload = json.dumps(json_safe(data), separators=(",", ":"), default=str, allow_nan=False)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"type": type, "data": payload}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_SECONDS)
    message_id, _ = pipe.execute()
    return _text(message_id)


def read_since(
    client: redis.Redis, run_id: str, last_id: str = "0-0", count: int = 100, block_ms: int | None = None
) -> list[LiveMessage]:
    """Messages after ``last_id`` (``"0-0"``: from the start; ``"$"``: only new ones), oldest first, at
    most ``count``. With ``block_ms``, wait up to that long for a message when there is none yet (None or 0:
    do not wait; Redis's "block forever" is deliberately not offered)."""
    block = block_ms if block_ms and block_ms > 0 else None
    response: list[Any] = client.xread({stream_key(run_id): last_id}, count=count, block=block) or []  # type: ignore[assignment]
    messages: list[LiveMessage] = []
    for _key, entries in response:
        for message_id, fields in entries:
            decoded = {_text(name): _text(value) for name, value in fields.items()}
            try:
                data = json.loads(decoded.get("data", "{}"))
            except json.JSONDecodeError:
                data = {}
            messages.append(
                (_text(message_id), decoded.get("type", ""), data if isinstance(data, dict) else {})
            )
    return messages


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
