"""ApiError: the API's error body as fields, a readable line for anything else, and requests that got no
answer."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from bertpt.client import ApiError, Client
from tests.support import free_port


def test_a_404_carries_the_apis_type_message_and_param(api: Client) -> None:
    with pytest.raises(ApiError) as info:
        api.runs.get("run_doesnotexist")
    error = info.value
    assert (error.status_code, error.type, error.param) == (404, "not_found", None)
    assert "run_doesnotexist" in error.message
    assert str(error) == f"404 not_found: {error.message}"


def test_a_422_names_the_field_at_fault(api: Client) -> None:
    with pytest.raises(ApiError) as info:
        api.runs.create({"base_model": "minilm-l6-h384-uncased"})  # no corpus_id
    error = info.value
    assert (error.status_code, error.type, error.param) == (422, "validation_error", "corpus_id")
    assert str(error).endswith("(param: corpus_id)") and "\n" not in str(error)


def test_a_wrong_key_is_a_401(make_client: Callable[..., Client]) -> None:
    with make_client("bpt_not-a-key") as api, pytest.raises(ApiError) as info:
        api.corpora.list()
    assert info.value.status_code == 401 and info.value.type == "unauthorized"


def test_an_answer_that_is_not_the_apis_error_body_is_still_one_line() -> None:
    """A proxy's HTML page for a 502: the type from the status, the URL and the start of the text."""
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"

    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=page, headers={"Content-Type": "text/html", "Retry-After": "7"})

    proxied = Client("http://proxy.example", "bpt_key", transport=httpx.MockTransport(proxy))
    with proxied as api, pytest.raises(ApiError) as info:
        api.models.list()
    error = info.value
    assert (error.status_code, error.type, error.param, error.retry_after) == (502, "bad_gateway", None, 7.0)
    assert "GET http://proxy.example/v1/models" in error.message and "nginx" in error.message
    assert "\n" not in str(error) and str(error).startswith("502 bad_gateway: Bad Gateway from GET")


def test_no_answer_names_the_url_and_never_the_key() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "bpt_secret-key") as api, pytest.raises(ApiError) as info:
        api.runs.list(status=["running"])
    error = info.value
    assert (error.status_code, error.type) == (0, "connection_error")
    assert f"{url}/v1/runs" in error.message and "status=" not in error.message  # not the query string
    assert "bpt_secret-key" not in str(error) + repr(error) + repr(api)
