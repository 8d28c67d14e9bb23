"""A run's live stream for a watcher: replay its Redis stream (:mod:`app.runs.live`), then follow it.

:func:`follow_run` yields the stream's entries after a given id (the Redis stream ids increase, so a
reconnecting client's ``Last-Event-ID`` resumes exactly after what it saw) and ends after a ``status``
entry with a terminal status, unless a resume follows it (then the resumed run goes on). A run may
also end without one reaching the stream (cancelled while queued, a worker lost): while following,
every quiet ``block_ms`` the database is asked, and once the run is terminal whatever is left is sent
and the stream ends. The route frames the entries as Server-Sent Events.

Redis I/O uses ``redis.asyncio`` so that a thousand idle watchers cost no threads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio
from redis.exceptions import RedisError

from app.errors import ValidationFailed
from app.runs.live import MESSAGE_TYPES, StreamEntry, read_since_async

__all__ = ["STREAM_ID_PATTERN", "StreamOptions", "follow_run", "open_async_redis", "parse_last_event_id"]

logger = logging.getLogger(__name__)

# A Redis stream id, ``<ms>-<seq>`` or ``<ms>`` (each below 2**64), or empty for "from the start": declared
# in the OpenAPI schema of Last-Event-ID and last_event_id, so that every value the schema allows resumes.
STREAM_ID_PATTERN = r"^([0-9]{1,19}(-[0-9]{1,19})?)?$"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


@dataclass(frozen=True)
class StreamOptions:
    """``ping_seconds``: keep-alive comment interval; ``block_ms``: longest wait on Redis before the run's
    status is checked in the database; ``batch``: messages read per round trip."""

    ping_seconds: float = 15.0
    block_ms: int = 5_000
    batch: int = 500


def parse_last_event_id(value: str | None, *, param: str = "last_event_id") -> str | None:
    """A stream id to resume after (``<ms>-<seq>`` or ``<ms>``), None for "from the start" (no value, or
    an empty one); ValidationFailed (naming ``param``) for anything :data:`STREAM_ID_PATTERN` refuses."""
    if value is None:
        return None
    if not _STREAM_ID.match(value):
        raise ValidationFailed(param, f"{value!r} is not an event id of this stream (expected <ms>-<seq>)")
    return value.strip() or None


def open_async_redis(url: str, options: StreamOptions) -> redis.asyncio.Redis:
    """The client the API's streams share (one connection pool per API process). Its socket timeout
    outlasts a blocking read."""
    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, socket_timeout=options.block_ms / 1000 + 10
    )


async def _resumed_after(client: redis.asyncio.Redis, run_id: str, ending_id: str) -> bool:
    """Whether the run went on after the ending ``ending_id``: its owner resumed it, which publishes a
    ``resumed`` event and a ``queued`` status right after; nothing else follows an ending."""
    following = await read_since_async(client, run_id, ending_id, count=10, block_ms=None)
    status = next((entry for entry in following if entry.type == "status"), None)
    return status is not None and not status.ends_stream


async def follow_run(
    client: redis.asyncio.Redis,
    run_id: str,
    *,
    after: str | None,
    terminal: bool,
    is_terminal: Callable[[], Awaitable[bool]],
    options: StreamOptions,
) -> AsyncIterator[StreamEntry]:
    """The run's entries after ``after`` (None: from the start of the stream) until its end. ``terminal``:
    whether the run had already finished when the client connected (then only the replay is sent)."""
    cursor = after or "0-0"
    try:
        while True:
            entries = await read_since_async(
                client, run_id, cursor, count=options.batch, block_ms=None if terminal else options.block_ms
            )
            for entry in entries:
                cursor = entry.id
                if entry.type not in MESSAGE_TYPES:
                    continue
                yield entry
                if entry.ends_stream and not await _resumed_after(client, run_id, entry.id):
                    return
            if entries:
                continue
            if terminal:
                return  # finished, and everything published is sent
            # Quiet for block_ms: did the run end without its final status reaching the stream?
            terminal = await is_terminal()
    except RedisError as exc:
        # The client reconnects (EventSource does so by itself) and resumes from its Last-Event-ID.
        logger.warning("live stream of run %s interrupted: %s", run_id, type(exc).__name__)
