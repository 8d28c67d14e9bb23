"""The live stream (SSE): replay after Last-Event-ID, follow live, heartbeats, and the end of the stream."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_stream_options
from app.runs.states import RunStatus
from app.runs.stream import STREAM_ID_PATTERN, StreamOptions, follow_run, open_async_redis
from tests.support import REDIS_URL, LiveStreams, TenantKey, assert_error, make_run


@pytest.fixture
def streams() -> Iterator[LiveStreams]:
    live = LiveStreams()
    yield live
    live.close()


@pytest.fixture
def fast_stream(app: FastAPI) -> StreamOptions:
    options = StreamOptions(ping_seconds=0.1, block_ms=100)
    app.dependency_overrides[get_stream_options] = lambda: options
    return options


def read_sse(lines: Iterator[str]) -> tuple[list[dict[str, Any]], int]:
    """The events of an SSE body (id, event, data parsed as JSON) and how many comment lines (pings)."""
    events: list[dict[str, Any]] = []
    pings, current = 0, dict[str, Any]()
    for line in lines:
        if line.startswith(":"):
            pings += 1
        elif not line:
            if current:
                events.append(current)
                current = {}
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[field] = json.loads(value) if field == "data" else value
    if current:
        events.append(current)
    return events, pings


def open_stream(
    client: TestClient, who: TenantKey, run_id: str, **headers: str
) -> tuple[list[dict[str, Any]], int]:
    url = f"/v1/runs/{run_id}/stream"
    with client.stream("GET", url, headers={**who.headers, **headers}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_sse(response.iter_lines())


def test_replay_after_last_event_id_then_end_at_the_terminal_status(
    client: TestClient, alice: TenantKey, session: Session, streams: LiveStreams, fast_stream: StreamOptions
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    sent: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": "running", "progress": {"step": 0}, "error": None}),
        ("metric", {"split": "train", "step": 10, "metrics": {"loss": 7.5}}),
        ("event", {"id": 1, "type": "checkpoint_saved", "level": "info", "message": "saved", "data": {}}),
        ("checkpoint", {"step": 10, "metrics": {}, "size_bytes": 5, "sha256": "00" * 32}),
        ("status", {"status": "succeeded", "progress": {"step": 10}, "error": None}),
    ]
    ids = [streams.publish(run.id, kind, data) for kind, data in sent]
    streams.publish(run.id, "metric", {"split": "train", "step": 11, "metrics": {}})  # after the end

    events, _ = open_stream(client, alice, run.id, **{"Last-Event-ID": ids[1]})
    assert [event["id"] for event in events] == ids[2:]
    assert [(event["event"], event["data"]) for event in events] == sent[2:]

    # From the start without an id; the query parameter works too, and the header wins over it.
    everything, _ = open_stream(client, alice, run.id)
    assert [event["id"] for event in everything] == ids
    url = f"/v1/runs/{run.id}/stream?last_event_id={ids[3]}"
    with client.stream("GET", url, headers=alice.headers) as response:
        assert [event["id"] for event in read_sse(response.iter_lines())[0]] == ids[4:]
    with client.stream("GET", url, headers={**alice.headers, "Last-Event-ID": ids[2]}) as response:
        assert [event["id"] for event in read_sse(response.iter_lines())[0]] == ids[3:]


@pytest.mark.timeout(60)  # without heartbeats the stream would wait for ever: fail, don't hang
def test_follows_live_with_heartbeats(
    client: TestClient, alice: TenantKey, session: Session, streams: LiveStreams, fast_stream: StreamOptions
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    first = streams.publish(run.id, "metric", {"split": "train", "step": 1, "metrics": {"loss": 9.0}})
    lines, pings = [], 0
    with client.stream("GET", f"/v1/runs/{run.id}/stream", headers=alice.headers) as response:
        for line in response.iter_lines():
            lines.append(line)
            pings += line.startswith(":")
            if pings == 2:  # two heartbeats while nothing happened: the run goes on, live
                streams.publish(run.id, "metric", {"split": "train", "step": 2, "metrics": {"loss": 8.0}})
                error = {"type": "x", "message": "y"}
                streams.publish(run.id, "status", {"status": "failed", "progress": {}, "error": error})
    events, pings = read_sse(iter(lines))
    assert pings >= 2
    assert [event["event"] for event in events] == ["metric", "metric", "status"]
    assert events[0]["id"] == first and events[0]["id"] < events[1]["id"] < events[2]["id"]
    assert events[2]["data"]["status"] == "failed"


def test_a_finished_run_replays_and_ends_without_a_status_event(
    client: TestClient, alice: TenantKey, session: Session, streams: LiveStreams, fast_stream: StreamOptions
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.CANCELLED)  # cancelled while queued: no worker
    one = streams.publish(run.id, "event", {"id": 1, "type": "cancelled", "message": "cancelled"})
    events, _ = open_stream(client, alice, run.id)
    assert [event["id"] for event in events] == [one]
    empty = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    assert open_stream(client, alice, empty.id)[0] == []


def test_following_stops_when_the_database_says_the_run_ended(streams: LiveStreams) -> None:
    """A run can end without its final status reaching the stream (cancelled while queued, a lost worker):
    each quiet block_ms the stream asks the database."""
    run_id = f"run_stream_test_{time.time_ns()}"
    streams.publish(run_id, "metric", {"split": "train", "step": 1, "metrics": {}})
    checks = 0

    async def is_terminal() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 3

    async def collect() -> list[str]:
        client = open_async_redis(REDIS_URL, StreamOptions(block_ms=50))
        try:
            options = StreamOptions(block_ms=50)
            events = follow_run(
                client, run_id, after=None, terminal=False, is_terminal=is_terminal, options=options
            )
            return [str(event.id) async for event in events]
        finally:
            await client.aclose()

    assert len(anyio.run(collect)) == 1
    assert checks == 3


def test_bad_last_event_id(client: TestClient, alice: TenantKey, session: Session) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    response = client.get(
        f"/v1/runs/{run.id}/stream", headers={**alice.headers, "Last-Event-ID": "yesterday"}
    )
    assert_error(response, 422, "validation_error", "Last-Event-ID")
    response = client.get(f"/v1/runs/{run.id}/stream?last_event_id=1-2-3", headers=alice.headers)
    assert_error(response, 422, "validation_error", "last_event_id")


def test_the_schema_says_which_event_ids_resume(
    client: TestClient, alice: TenantKey, session: Session, streams: LiveStreams, fast_stream: StreamOptions
) -> None:
    """Last-Event-ID and last_event_id declare their pattern in the OpenAPI schema: every value it allows
    resumes (empty: from the start), and what it refuses (the literal "null" of a client that had no id
    yet) is the 422 the schema predicts."""
    spec = client.get("/openapi.json").json()["paths"]["/v1/runs/{run_id}/stream"]["get"]
    schemas = {parameter["name"]: parameter["schema"] for parameter in spec["parameters"]}
    for name in ("Last-Event-ID", "last_event_id"):
        assert schemas[name] == {**schemas[name], "type": "string", "pattern": STREAM_ID_PATTERN}
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)  # finished: the replay alone
    first = streams.publish(run.id, "status", {"status": "running", "progress": {"step": 0}, "error": None})
    last = streams.publish(run.id, "status", {"status": "succeeded", "progress": {"step": 1}, "error": None})
    for value, expected in [("", [first, last]), ("0", [first, last]), (first, [last]), ("9" * 19, [])]:
        assert re.match(STREAM_ID_PATTERN, value)
        events, _ = open_stream(client, alice, run.id, **{"Last-Event-ID": value})
        assert [event["id"] for event in events] == expected, value
    for value in ("null", "1-2-3", "1" * 20):
        assert not re.match(STREAM_ID_PATTERN, value)
        response = client.get(f"/v1/runs/{run.id}/stream", headers={**alice.headers, "Last-Event-ID": value})
        assert_error(response, 422, "validation_error", "Last-Event-ID")


def test_a_client_may_leave_mid_stream(
    client: TestClient, alice: TenantKey, session: Session, streams: LiveStreams, fast_stream: StreamOptions
) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING)
    first = streams.publish(run.id, "metric", {"split": "train", "step": 1, "metrics": {"loss": 9.0}})
    started = time.perf_counter()
    with client.stream("GET", f"/v1/runs/{run.id}/stream", headers=alice.headers) as response:
        lines = response.iter_lines()
        assert next(lines) == f"id: {first}"
    assert time.perf_counter() - started < 5
    # The server is still serving.
    assert client.get(f"/v1/runs/{run.id}", headers=alice.headers).status_code == 200


def test_a_run_its_owner_resumed_streams_on_past_its_old_ending(streams: LiveStreams) -> None:
    """The stream holds ``failed``, the resume (an event and ``queued``), the resumed attempt's messages,
    then ``succeeded``: a watcher sees all of it, and nothing after the last ending."""
    run_id = f"run_stream_test_{time.time_ns()}"
    streams.publish(run_id, "status", {"status": "failed"})
    streams.publish(run_id, "event", {"id": 7, "type": "resumed", "level": "info", "message": "", "data": {}})
    streams.publish(run_id, "status", {"status": "queued"})
    streams.publish(run_id, "rewind", {"step": 10, "attempt": 4})
    streams.publish(run_id, "metric", {"split": "train", "step": 11, "metrics": {}})
    streams.publish(run_id, "status", {"status": "succeeded"})
    streams.publish(run_id, "metric", {"split": "train", "step": 12, "metrics": {}})  # after the end

    async def collect(terminal: bool) -> list[str]:
        client = open_async_redis(REDIS_URL, StreamOptions(block_ms=50))

        async def is_terminal() -> bool:
            return True

        try:
            events = follow_run(
                client,
                run_id,
                after=None,
                terminal=terminal,
                is_terminal=is_terminal,
                options=StreamOptions(block_ms=50),
            )
            return [event.type async for event in events]
        finally:
            await client.aclose()

    for terminal in (False, True):  # watching live, or replaying a run that had ended again
        assert anyio.run(collect, terminal) == ["status", "event", "status", "rewind", "metric", "status"]
