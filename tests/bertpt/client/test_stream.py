"""``client.runs.stream``: a run's live events from the API in process, resumed with ``Last-Event-ID``
after a connection lost anywhere in the body, or a stream that ended before the run; never an event
twice, never a gap; bounded reconnections. (A real TCP connection cut between real processes:
tests/e2e/test_client.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_stream_options
from app.runs.states import RunStatus
from app.runs.stream import StreamOptions
from bertpt.client import ApiError, Client, Retries, StreamEvent
from tests.bertpt.client.conftest import NO_WAIT, CutBodies, InProcess
from tests.support import LiveStreams, TenantKey, make_run


@pytest.fixture
def streams(app: FastAPI) -> Iterator[LiveStreams]:
    # Quick keep-alives and database checks: a test never waits seconds on a quiet stream.
    app.dependency_overrides[get_stream_options] = lambda: StreamOptions(ping_seconds=0.1, block_ms=100)
    live = LiveStreams()
    yield live
    live.close()


def a_short_run(streams: LiveStreams, run_id: str) -> list[StreamEvent]:
    """What a short run publishes, from running to succeeded: the events a watcher must see, in order."""
    sent: list[tuple[str, dict[str, Any]]] = [("status", {"status": "running", "progress": {"step": 0}})]
    for step in range(1, 31):
        sent.append(("metric", {"split": "train", "step": step, "metrics": {"loss": 9.0 - step / 2}}))
        if step == 5:
            sent.append(("checkpoint", {"step": 5, "metrics": {}, "size_bytes": 9, "sha256": "0" * 64}))
    sent.append(("status", {"status": "succeeded", "progress": {"step": 30}}))
    return [StreamEvent(streams.publish(run_id, kind, data), kind, data) for kind, data in sent]


@pytest.fixture
def cut_client(client: TestClient, alice: TenantKey) -> Callable[..., tuple[Client, CutBodies]]:
    def make(cuts: list[int], **kwargs: Any) -> tuple[Client, CutBodies]:
        transport = CutBodies(InProcess(client), cuts, path_suffix="/stream", **kwargs)
        return Client("http://testserver", alice.key, transport=transport, retries=NO_WAIT), transport

    return make


def test_the_whole_stream_in_order_then_the_end(
    api: Client, session: Session, alice: TenantKey, streams: LiveStreams
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    published = a_short_run(streams, run.id)
    streams.publish(run.id, "metric", {"split": "train", "step": 31, "metrics": {}})  # after the end
    events = list(api.runs.stream(run.id))
    assert events == published and events[-1].ends_run and not events[0].ends_run
    # From after a given id.
    assert list(api.runs.stream(run.id, last_event_id=published[4].id)) == published[5:]


@pytest.mark.parametrize("cut_at", [40, 150, 333, 700, 1000])
def test_a_connection_lost_anywhere_resumes_after_the_last_event_yielded(
    cut_client: Callable[..., tuple[Client, CutBodies]],
    session: Session,
    alice: TenantKey,
    streams: LiveStreams,
    cut_at: int,
) -> None:
    """Two cuts at ``cut_at`` bytes into the first two answers (mid-event or between events): every
    event once, in order, and each reconnection asked for what follows the last event yielded."""
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    published = a_short_run(streams, run.id)
    api, transport = cut_client([cut_at, cut_at])
    yielded = []
    with api:
        for event in api.runs.stream(run.id):
            yielded.append(event)
    assert transport.done == 2 and len(transport.cut_requests) == 3
    assert yielded == published
    # Each reconnection asked for what follows an event the caller had been given (none yet: from the
    # start), never going back.
    ids = [None, *(event.id for event in published)]
    asked = [ids.index(request.headers.get("Last-Event-ID")) for request in transport.cut_requests]
    assert asked[0] == 0 and asked == sorted(asked)
    if cut_at >= 333:  # past the first event: the reconnections resumed after one
        assert asked[1] > 0


def test_a_stream_that_ends_before_the_run_is_followed_again(
    cut_client: Callable[..., tuple[Client, CutBodies]],
    session: Session,
    alice: TenantKey,
    streams: LiveStreams,
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    published = a_short_run(streams, run.id)
    api, transport = cut_client([500], cleanly=True)
    with api:
        assert list(api.runs.stream(run.id)) == published
    assert transport.done == 1 and len(transport.cut_requests) == 2


def test_a_finished_run_without_a_final_status_ends_the_stream(
    api: Client, session: Session, alice: TenantKey, streams: LiveStreams
) -> None:
    """Cancelled while queued: no worker published its ending; the API ends the stream after the replay
    and the client, seeing the run finished, stops."""
    run = make_run(session, alice.tenant, status=RunStatus.CANCELLED)
    data = {"id": 1, "type": "cancelled", "level": "info", "message": "cancelled", "data": {}}
    one = streams.publish(run.id, "event", data)
    assert list(api.runs.stream(run.id)) == [StreamEvent(one, "event", data)]


def test_events_repeated_by_a_server_are_yielded_once() -> None:
    """Whatever a server (or a proxy's cache) replays, an id at or before the last one yielded is skipped."""
    body = (
        'id: 1-0\nevent: metric\ndata: {"step": 1}\n\n'
        'id: 2-0\nevent: metric\ndata: {"step": 2}\n\n'
        'id: 2-0\nevent: metric\ndata: {"step": 2}\n\n'
        'id: 1-5\nevent: metric\ndata: {"step": 1}\n\n'
        ": ping\n\n"
        'id: 10-0\nevent: status\ndata: {"status": "succeeded"}\n\n'
    )

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    with Client("http://api", "bpt_key", transport=httpx.MockTransport(server)) as api:
        events = list(api.runs.stream("run_x", last_event_id="0-9"))
    assert [(event.id, event.data) for event in events] == [
        ("1-0", {"step": 1}),
        ("2-0", {"step": 2}),
        ("10-0", {"status": "succeeded"}),
    ]


def test_reconnections_are_bounded_and_errors_that_retrying_cannot_fix_are_raised_at_once(
    api: Client, recorder: Any
) -> None:
    with pytest.raises(ApiError) as info:
        list(api.runs.stream("run_missing"))
    assert info.value.status_code == 404 and len(recorder.sent("GET")) == 1

    attempts = []

    def down(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused")

    retries = Retries(attempts=2, backoff_seconds=0)
    unreachable = Client("http://down", "bpt_key", transport=httpx.MockTransport(down), retries=retries)
    with unreachable as client, pytest.raises(ApiError) as info:
        list(client.runs.stream("run_x"))
    assert info.value.type == "connection_error" and "http://down/v1/runs/run_x/stream" in info.value.message
    assert len(attempts) == 3  # the first try and 2 reconnections
