"""A run's live stream (``GET /v1/runs/{id}/stream``, Server-Sent Events) as an iterator that survives a
dropped connection.

The API sends the entries of the run's stream (``metric``, ``status``, ``event``, ``checkpoint``), each
with an increasing id (a Redis stream id, ``<ms>-<seq>``) and JSON data, then ends the stream after the
status of a finished run (:mod:`app.runs.stream`). When the connection drops (a proxy's idle timeout, a
laptop's Wi-Fi, the API restarting), the iterator connects again with ``Last-Event-ID`` set to the last id
it yielded, and the API resumes right after it: nothing is missed, and nothing is yielded twice (an id at
or before the last one yielded is skipped, whatever a server sends). After :class:`~bertpt.client.client.
Retries` ``attempts`` reconnections in a row that bring no new event it gives up with the ApiError of the
last failure.

A stream that ends cleanly without a final status (the API stopped following it, a run cancelled while
queued) is not taken as the end: the run is looked up, and followed again unless it has finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from httpx_sse import EventSource, SSEError

from app.runs.states import RunStatus
from bertpt.client.errors import ApiError, is_transient

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = ["StreamEvent", "follow_stream"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEvent:
    """One entry of a run's stream: ``id`` (pass it as ``last_event_id`` to resume after it), ``event``
    (``metric``, ``status``, ``event`` or ``checkpoint``) and its ``data``."""

    id: str
    event: str
    data: dict[str, Any]

    @property
    def ends_run(self) -> bool:
        """Whether this is the status of a finished run (succeeded, failed, cancelled)."""
        if self.event != "status":
            return False
        try:
            return RunStatus(str(self.data.get("status"))).is_terminal
        except ValueError:
            return False


def _position(event_id: str) -> tuple[int, int] | None:
    """The order of a stream id (``<ms>-<seq>`` or ``<ms>``), None for an id of another form."""
    ms, _, seq = event_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return None


class _Seen:
    """The ids yielded so far, as the last one's position (ids increase) or, for ids of another form, a
    set."""

    def __init__(self, last_event_id: str | None) -> None:
        self.last: tuple[int, int] | None = None
        self.others: set[str] = set()
        if last_event_id:
            self.add(last_event_id)

    def add(self, event_id: str) -> None:
        position = _position(event_id)
        if position is None:
            self.others.add(event_id)
        else:
            self.last = position

    def __contains__(self, event_id: str) -> bool:
        position = _position(event_id)
        if position is None:
            return event_id in self.others
        return self.last is not None and position <= self.last


def follow_stream(client: Client, run_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
    """The events of run ``run_id``'s stream after ``last_event_id`` (None: from its start), live, until
    the run has finished. Raises ApiError at once for what retrying cannot fix (404 no such run, 401, 422
    a malformed id), and when the connection could not be made again (see the module docstring)."""
    seen = _Seen(last_event_id)
    resume_after = last_event_id
    path = f"/v1/runs/{run_id}/stream"
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if resume_after:
            headers["Last-Event-ID"] = resume_after
        last: StreamEvent | None = None
        try:
            with client.request_stream("GET", path, headers=headers) as response:
                for sse in EventSource(response).iter_sse():
                    if not sse.id or sse.id in seen or not sse.event:
                        continue
                    last = StreamEvent(id=sse.id, event=sse.event, data=_data(sse.data, sse.id))
                    seen.add(sse.id)
                    resume_after = sse.id
                    failures = 0
                    yield last
        except ApiError as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if failures > client.retries.attempts:
                raise
            logger.warning(
                "the stream of run %s broke (%s); reconnecting after event %s (%d/%d)",
                run_id,
                exc,
                resume_after or "none",
                failures,
                client.retries.attempts,
            )
            client.retries.wait(failures)
            continue
        except SSEError as exc:  # not an event stream (a proxy's page answered with 200)
            raise ApiError(0, "invalid_response", f"GET {path} did not answer with events: {exc}") from None
        # The API ended the stream: after a finished run's status, or when it stopped following the run.
        if last is not None and last.ends_run:
            return
        try:
            if client.runs.get(run_id).status.is_terminal:
                return
        except ApiError as exc:
            if not is_transient(exc):
                raise
        failures += 1
        if failures > client.retries.attempts:
            raise ApiError(0, "connection_lost", f"the stream of run {run_id} keeps ending before the run")
        client.retries.wait(failures)


def _data(text: str, event_id: str) -> dict[str, Any]:
    """An event's JSON data (an object); ApiError when it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(0, "invalid_response", f"event {event_id} of the stream does not carry a JSON object")
    return data
