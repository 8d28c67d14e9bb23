"""A run's live stream as Server-Sent Events: replay its Redis stream (:mod:`app.runs.live`), then follow it.

Every message becomes one event: ``event:`` its type (metric, status, event, checkpoint), ``id:`` its
Redis stream id (increasing, so a reconnecting client's ``Last-Event-ID`` resumes exactly after what it
saw), ``data:`` its JSON as the worker published it. The stream ends after a ``status`` message with a
terminal status. A run may also end without one reaching the stream (cancelled while queued, a worker
lost): while following, every quiet ``block_ms`` the database is asked, and once the run is terminal
whatever is left is sent and the stream ends.

Redis I/O uses ``redis.asyncio`` so that a thousand idle watchers cost no threads.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from app.errors import ValidationFailed
from app.models import RunStatus
from app.runs.live import MESSAGE_TYPES, stream_key

__all__ = [
    "StreamMessage",
    "StreamOptions",
    "open_async_redis",
    "parse_last_event_id",
    "read_messages",
    "run_events",
]

logger = logging.getLogger(__name__)

_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_TERMINAL = frozenset(status.value for status in RunStatus if status.is_terminal)


@dataclass(frozen=True)
class StreamOptions:
    """``ping_seconds``: keep-alive comment interval; ``block_ms``: longest wait on Redis before the run's
    status is checked in the database; ``batch``: messages read per round trip."""

    ping_seconds: float = 15.0
    block_ms: int = 5_000
    batch: int = 500


@dataclass(frozen=True)
class StreamMessage:
    id: str
    type: str
    data: str  # the JSON text as published

    @property
    def ends_stream(self) -> bool:
        if self.type != "status":
            return False
        try:
            status = json.loads(self.data).get("status")
        except (ValueError, AttributeError):
            return False
        return status in _TERMINAL


def parse_last_event_id(value: str | None, *, param: str = "last_event_id") -> str | None:
    """A stream id to resume after (``<ms>-<seq>`` or ``<ms>``), None for "from the start"."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _STREAM_ID.match(value):
        raise ValidationFailed(param, f"{value!r} is not an event id of this stream (expected <ms>-<seq>)")
    return value


def open_async_redis(url: str, options: StreamOptions) -> redis.asyncio.Redis:
    # The socket timeout must outlast a blocking read.
    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, socket_timeout=options.block_ms / 1000 + 10
    )


async def read_messages(
    client: redis.asyncio.Redis, run_id: str, after: str, *, count: int, block_ms: int | None
) -> list[StreamMessage]:
    """Messages after ``after``, oldest first (waiting up to ``block_ms`` when there are none yet)."""
    response: Any = await client.xread({stream_key(run_id): after}, count=count, block=block_ms or None)
    messages = []
    for _key, entries in response or []:
        for message_id, fields in entries:
            messages.append(
                StreamMessage(id=message_id, type=fields.get("type", ""), data=fields.get("data", "{}"))
            )
    return messages


async def run_events(
    client: redis.asyncio.Redis,
    run_id: str,
    *,
    after: str | None,
    terminal: bool,
    is_terminal: Callable[[], Awaitable[bool]],
    options: StreamOptions,
) -> AsyncIterator[ServerSentEvent]:
    """The run's events after ``after`` (None: from the start of the stream) until its end. ``terminal``:
    whether the run had already finished when the client connected (then only the replay is sent)."""
    cursor = after or "0-0"
    try:
        while True:
            messages = await read_messages(
                client, run_id, cursor, count=options.batch, block_ms=None if terminal else options.block_ms
            )
            for message in messages:
                cursor = message.id
                if message.type not in MESSAGE_TYPES:
                    continue
                yield ServerSentEvent(data=message.data, event=message.type, id=message.id)
                if message.ends_stream:
                    return
            if messages:
                continue
            if terminal:
                return  # finished, and everything published is sent
            # Quiet for block_ms: did the run end without its final status reaching the stream?
            terminal = await is_terminal()
    except RedisError as exc:
        # The client reconnects (EventSource does so by itself) and resumes from its Last-Event-ID.
        logger.warning("live stream of run %s interrupted: %s", run_id, type(exc).__name__)
