"""/docs and /redoc work offline (app/api/docs.py): every URL the pages load is the API's own, and answers
with the file's content type."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def loaded_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_elsewhere(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html  # no CDN, no Google fonts
    urls = loaded_urls(html)
    assert len(urls) >= 2  # the script (and the stylesheet) and the favicon
    assert any(url.endswith(".js") for url in urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], url
        assert len(asset.content) > 1000, url
    assert "/openapi.json" in html


def test_swagger_ui_is_the_bundle_that_reads_openapi_3_1(client: TestClient) -> None:
    """Swagger UI 4 shows "Unable to render this definition" for the OpenAPI 3.1 the API describes itself
    with: the stylesheet and script served are those of Swagger UI 5."""
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    (script,) = [url for url in loaded_urls(client.get("/docs").text) if url.endswith(".js")]
    bundle = client.get(script).text
    assert "SwaggerUIBundle" in bundle
    assert "OAS31" in bundle  # Swagger UI 5's OpenAPI 3.1 plugin (4.15.5's bundle has none)


def test_the_oauth2_redirect_page_is_served(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "https://" not in response.text
