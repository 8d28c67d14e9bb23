"""The client against the API in process: the app of tests/app/conftest.py (on the test's rolled-back
transaction) reached through its TestClient's transport (:class:`InProcess`), so every request is a real
HTTP exchange with the real routes, without a socket. The tests that need real processes and sockets (a
connection cut mid-stream or mid-download) are in tests/e2e/test_client.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.deps import get_analysis_enqueuer, get_evaluation_enqueuer, get_run_enqueuer
from bertpt.client import Client, Retries
from tests.app.conftest import app, client, settings  # noqa: F401  (fixtures)
from tests.support import TenantKey

# Reconnect and resume at once: the tests count attempts, not seconds.
NO_WAIT = Retries(attempts=3, backoff_seconds=0)


class InProcess(httpx.BaseTransport):
    """An httpx transport that hands each request to the TestClient's own transport (the app in process,
    its lifespan started by the fixture). Starlette's TestClient is built on ``httpx2``, another package
    than the client's ``httpx``: this carries the request and the answer (streamed, not read ahead) from
    one to the other unchanged."""

    def __init__(self, test_client: TestClient) -> None:
        self._inner = test_client._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = httpx2.Request(
            request.method, str(request.url), headers=request.headers.raw, content=request.read()
        )
        answer = self._inner.handle_request(inner)
        return httpx.Response(
            answer.status_code, headers=answer.headers.raw, stream=_Body(answer), request=request
        )


class _Body(httpx.SyncByteStream):
    def __init__(self, answer: httpx2.Response) -> None:
        self._answer = answer

    def __iter__(self) -> Iterator[bytes]:
        yield from self._answer.stream  # type: ignore[misc]

    def close(self) -> None:
        self._answer.close()


class Recorder(httpx.BaseTransport):
    """A transport that passes every request to ``inner`` and keeps them (method, path, headers), so that a
    test sees what the client sent."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def sent(self, method: str | None = None) -> list[httpx.Request]:
        return [request for request in self.requests if method is None or request.method == method]


class CutBodies(httpx.BaseTransport):
    """Passes requests to ``inner``; the body of the n-th answer (from 0) to a GET whose path ends with
    ``path_suffix`` stops after ``cuts[n]`` bytes: with a lost connection (as a proxy's timeout or a
    network drop shows it to httpx), or, with ``cleanly``, as if the answer were complete. ``done``: the
    cuts made; ``cut_requests``: those requests, in order."""

    def __init__(
        self, inner: httpx.BaseTransport, cuts: list[int], *, path_suffix: str, cleanly: bool = False
    ) -> None:
        self.inner = inner
        self.cuts = list(cuts)
        self.path_suffix = path_suffix
        self.cleanly = cleanly
        self.cut_requests: list[httpx.Request] = []
        self.done = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "GET" or not request.url.path.endswith(self.path_suffix):
            return response
        self.cut_requests.append(request)
        if len(self.cut_requests) > len(self.cuts):
            return response
        limit = self.cuts[len(self.cut_requests) - 1]
        assert isinstance(response.stream, httpx.SyncByteStream)
        body = _CutBody(response.stream, limit, self)
        return httpx.Response(response.status_code, headers=response.headers, stream=body, request=request)


class _CutBody(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limit: int, owner: CutBodies) -> None:
        self.inner, self.limit, self.owner = inner, limit, owner

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                self.owner.done += 1
                self.inner.close()
                if self.owner.cleanly:
                    return
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def recorder(client: TestClient) -> Recorder:  # noqa: F811
    return Recorder(InProcess(client))


@pytest.fixture
def api(recorder: Recorder, alice: TenantKey) -> Iterator[Client]:
    """A Client of the in-process API with alice's key, recording its requests (``recorder``)."""
    with Client("http://testserver", alice.key, transport=recorder, retries=NO_WAIT) as api:
        yield api


@pytest.fixture
def make_client(client: TestClient) -> Callable[..., Client]:  # noqa: F811
    """``make_client(key, transport=None) -> Client`` of the in-process API (closed by the test)."""

    def make(key: str, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> Client:
        return Client("http://testserver", key, transport=transport or InProcess(client), **kwargs)

    return make


@pytest.fixture
def sent(app: FastAPI) -> dict[str, list[str]]:  # noqa: F811
    """The ids the API sent to its queues, by kind (the Celery clients replaced at the boundary)."""
    sent: dict[str, list[str]] = {"runs": [], "evaluations": [], "analyses": []}
    app.dependency_overrides[get_run_enqueuer] = lambda: sent["runs"].append
    app.dependency_overrides[get_evaluation_enqueuer] = lambda: sent["evaluations"].append
    app.dependency_overrides[get_analysis_enqueuer] = lambda: sent["analyses"].append
    return sent
