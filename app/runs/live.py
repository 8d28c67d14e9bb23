"""The live path of a run: one Redis stream per run, written by the worker (and by the API for what a
client does), read by the API's SSE route.

The database is the truth (metrics, events, status); the stream only carries the same facts to watchers
with low latency, so losing it loses nothing that cannot be read back from SQL. Messages are published
after the matching rows are committed: a client that sees a message can find its rows.

Each entry has two fields, ``type`` and ``data`` (JSON); the types are :data:`LiveMessage`'s:

- ``metric``: a :class:`~worker.pretraining.records.MetricsRecord` of the training library,
  ``{"split", "step", "metrics": {...}}``;
- ``status``: a :class:`StatusMessage` on every transition and, while running, at most about once a
  second with the progress;
- ``event``: a lifecycle event as ``GET /v1/runs/{id}/events`` serves it (:class:`RunEventPublic`);
- ``checkpoint``: a kept checkpoint as ``GET /v1/runs/{id}/checkpoints`` serves it;
- ``rewind``: a :class:`RewindMessage`: a new attempt resumes from the checkpoint of ``step``; the
  points past it that the interrupted attempt published are superseded (drop them: the new attempt
  publishes those steps again).

A stream ends with a ``status`` message whose status is terminal (unless its owner resumes the run: then
it goes on). Streams are capped (about
:data:`STREAM_MAXLEN` messages, oldest dropped first) and expire :data:`STREAM_TTL_SECONDS` after their
last message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

import redis
import redis.asyncio
from pydantic import BaseModel, ValidationError

from app.runs.schemas import RunCheckpointPublic, RunError, RunEventPublic, RunProgress
from app.runs.states import RunStatus
from worker.pretraining.records import MetricsRecord

__all__ = [
    "MESSAGE_TYPES",
    "STREAM_MAXLEN",
    "STREAM_TTL_SECONDS",
    "LiveMessage",
    "LivePublisher",
    "MessageType",
    "RewindMessage",
    "StatusMessage",
    "StreamEntry",
    "create_redis",
    "publish",
    "read_since",
    "read_since_async",
    "stream_key",
]

logger = logging.getLogger(__name__)

MessageType = Literal["metric", "status", "event", "checkpoint", "rewind"]
MESSAGE_TYPES: frozenset[str] = frozenset(get_args(MessageType))
# A metric record every logging step plus evaluations: 200k messages cover a very long run; trimming
# is approximate (~), which lets Redis drop whole internal nodes cheaply.
STREAM_MAXLEN = 200_000
# Long enough for a client to look at a finished run's stream; refreshed by every message, so a
# running run's stream never expires while it is still being written.
STREAM_TTL_SECONDS = 7 * 24 * 3600


class StatusMessage(BaseModel):
    """The run's status and progress (and its error once it failed)."""

    status: RunStatus
    progress: RunProgress = RunProgress()
    error: RunError | None = None


class RewindMessage(BaseModel):
    """Attempt ``attempt`` resumes from the checkpoint of ``step`` (None: from the beginning): metric
    points and checkpoints after ``step`` (from ``step`` 0 on for None) are superseded."""

    step: int | None
    attempt: int


LiveMessage = MetricsRecord | StatusMessage | RunEventPublic | RunCheckpointPublic | RewindMessage
_TYPES: dict[type[BaseModel], MessageType] = {
    MetricsRecord: "metric",
    StatusMessage: "status",
    RunEventPublic: "event",
    RunCheckpointPublic: "checkpoint",
    RewindMessage: "rewind",
}


def stream_key(run_id: str) -> str:
    return f"bertpt:run:{run_id}:stream"


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


def publish(client: redis.Redis, run_id: str, message: LiveMessage) -> str:
    """Append ``message`` to the run's stream and (re)set the stream's expiry; returns the entry's id.
    Non-finite numbers become null (JSON has none)."""
    kind = _TYPES[type(message)]
    key = stream_key(run_id)
    data = message.model_dump_json(exclude={"kind"})
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"type": kind, "data": data}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_SECONDS)
    entry_id, _ = pipe.execute()
    return str(entry_id)


class LivePublisher:
    """Best-effort publication: a Redis failure is logged once per outage, never raised (the database
    has everything). ``client`` None publishes nothing."""

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client
        self._failing = False

    def publish(self, run_id: str, message: LiveMessage) -> None:
        if self.client is None:
            return
        try:
            publish(self.client, run_id, message)
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning("live stream unavailable (%s); the database still gets everything", exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("live stream available again")
            self._failing = False


@dataclass(frozen=True)
class StreamEntry:
    id: str  # Redis stream id, increasing: ``<ms>-<seq>``
    type: str
    data: str  # the JSON text as published

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def ends_stream(self) -> bool:
        """A status message with a terminal status: nothing follows it."""
        if self.type != "status":
            return False
        try:
            return StatusMessage.model_validate_json(self.data).status.is_terminal
        except ValidationError:
            return False


def _entries(response: Any) -> list[StreamEntry]:
    return [
        StreamEntry(id=entry_id, type=fields.get("type", ""), data=fields.get("data", "{}"))
        for _key, entries in response or []
        for entry_id, fields in entries
    ]


def read_since(
    client: redis.Redis, run_id: str, last_id: str = "0-0", count: int = 100, block_ms: int | None = None
) -> list[StreamEntry]:
    """Entries after ``last_id`` (``"0-0"``: from the start; ``"$"``: only new ones), oldest first, at
    most ``count``. With ``block_ms``, wait up to that long for one when there is none yet (None or 0: do
    not wait; Redis's "block forever" is deliberately not offered)."""
    return _entries(client.xread({stream_key(run_id): last_id}, count=count, block=block_ms or None))


async def read_since_async(
    client: redis.asyncio.Redis, run_id: str, last_id: str, *, count: int, block_ms: int | None
) -> list[StreamEntry]:
    """:func:`read_since` for the API's event loop."""
    return _entries(await client.xread({stream_key(run_id): last_id}, count=count, block=block_ms or None))
