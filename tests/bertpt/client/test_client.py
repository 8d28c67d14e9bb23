"""The Client: the key sent on every request and shown nowhere, lists followed to their last page, the one
low-level door (``request``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bertpt.client import ApiError, Client
from tests.bertpt.client.conftest import Recorder
from tests.support import TenantKey, corpus_bytes


def test_every_request_carries_the_key_and_the_client_never_shows_it(
    api: Client, recorder: Recorder, alice: TenantKey
) -> None:
    api.models.list()
    api.corpora.list()
    assert {request.headers["Authorization"] for request in recorder.requests} == {f"Bearer {alice.key}"}
    assert all(request.headers["User-Agent"].startswith("bertpt-client") for request in recorder.requests)
    assert alice.key not in repr(api) and repr(api) == "Client(api_url='http://testserver')"


def test_lists_follow_the_cursor_to_the_last_page(
    api: Client, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bertpt.client.client.MAX_LIMIT", 2)  # pages of 2: 5 corpora take 3 pages
    uploaded = []
    for number in range(5):
        path = tmp_path / f"corpus-{number}.txt"
        path.write_bytes(corpus_bytes(tag=f"-{number}"))
        uploaded.append(api.corpora.upload(path).id)
    recorder.requests.clear()

    listed = api.corpora.list()
    assert [corpus.id for corpus in listed] == uploaded[::-1]  # all of them, newest first, once each
    pages = recorder.sent("GET")
    assert len(pages) == 3
    assert [request.url.params["limit"] for request in pages] == ["2", "2", "2"]
    assert pages[0].url.params["after"] == "" and pages[1].url.params["after"] != ""


def test_request_is_the_low_level_door(api: Client, alice: TenantKey) -> None:
    response = api.request("GET", "/v1/models")
    assert response.status_code == 200 and "data" in response.json()
    with pytest.raises(ApiError) as info:
        api.request("GET", "/v1/corpora", params={"limit": 0})
    assert (info.value.status_code, info.value.param) == (422, "limit")


def test_a_closed_client_is_a_context_manager(make_client: Callable[..., Client], alice: TenantKey) -> None:
    client = make_client(alice.key)
    with client as entered:
        assert entered is client and entered.models.list()
    with pytest.raises(RuntimeError):
        client.models.list()


@pytest.mark.parametrize("api_url", ["http://api.test/bertpt", "http://api.test/bertpt/"])
def test_an_api_url_with_a_path_keeps_it(api_url: str) -> None:
    """Behind a proxy at ``/bertpt``: requests go under it, and an error names the URL they went to."""
    sent: list[str] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        raise httpx.ConnectError("connection refused", request=request)

    with Client(api_url, "bpt_key", transport=httpx.MockTransport(unreachable)) as api:
        with pytest.raises(ApiError) as info:
            api.request("GET", "/v1/runs", params={"limit": 1})
        assert "at http://api.test/bertpt/v1/runs:" in info.value.message
        with pytest.raises(ApiError) as info, api.request_stream("GET", "/v1/runs/run_x/stream"):
            pass
        assert "at http://api.test/bertpt/v1/runs/run_x/stream:" in info.value.message
    assert sent == ["http://api.test/bertpt/v1/runs?limit=1", "http://api.test/bertpt/v1/runs/run_x/stream"]
