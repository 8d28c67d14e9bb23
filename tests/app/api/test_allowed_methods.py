"""OPTIONS and 405 name every method of a path (the methods of all its routes), as the OpenAPI schema lists
them; CORS preflights stay CORS's."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.support import TenantKey, assert_error, make_run


def allow(response: object) -> set[str]:
    header = response.headers["allow"]  # type: ignore[attr-defined]
    return {method.strip() for method in header.split(",")}


def test_options_names_every_method_of_every_path(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        url = path.replace("{run_id}", "run_x").replace("{step}", "3").replace("{corpus_id}", "corp_x")
        url = url.replace("{checkpoint_id}", "ckpt_x")
        response = client.options(url)
        assert response.status_code == 204 and response.content == b"", url
        documented = {method.upper() for method in operations}
        assert documented | {"OPTIONS"} <= allow(response), url  # HEAD too, where a download answers it


def test_options_on_a_path_with_several_routes(client: TestClient) -> None:
    # GET and DELETE of a run are two routes: Starlette alone named only the first one's method.
    assert allow(client.options("/v1/runs/run_x")) == {"GET", "DELETE", "OPTIONS"}
    assert allow(client.options("/v1/runs")) == {"GET", "POST", "OPTIONS"}
    assert allow(client.options("/v1/runs/run_x/model")) == {"GET", "HEAD", "OPTIONS"}


def test_a_405_names_every_method_too(client: TestClient, alice: TenantKey, session: Session) -> None:
    run = make_run(session, alice.tenant)
    response = client.put(f"/v1/runs/{run.id}", headers=alice.headers)
    assert_error(response, 405, "method_not_allowed")
    assert allow(response) == {"GET", "DELETE", "OPTIONS"}


def test_options_on_no_path_is_a_404(client: TestClient) -> None:
    assert_error(client.options("/v1/nothing-here"), 404, "not_found")


def test_cors_preflight_is_answered_by_cors(client: TestClient) -> None:
    response = client.options(
        "/v1/runs",
        headers={"Origin": "https://dashboard.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert "POST" in response.headers["access-control-allow-methods"]
