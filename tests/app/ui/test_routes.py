"""The dashboard's routes in process: the page and its files with their content types, the redirects to it,
the charting library from the installed plotly package (compressed, cached, revalidated), and what no route
serves."""

from __future__ import annotations

import gzip
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.ui.assets import STATIC_DIR
from app.ui.routes import CONTENT_SECURITY_POLICY

# Where pip installed it, as the package's record of its files says.
PLOTLY_JS = Path(
    str(importlib.metadata.distribution("plotly").locate_file("plotly/package_data/plotly.min.js"))
)


def test_root_and_ui_redirect_to_the_dashboard(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "/ui/", path


def test_the_page_is_html_with_its_security_headers_and_needs_no_key(client: TestClient) -> None:
    response = client.get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY  # no inline script, no CDN
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == (STATIC_DIR / "index.html").read_text()
    assert 'src="vendor/plotly.min.js"' in response.text and 'type="module" src="app.js"' in response.text


def test_every_file_the_dashboard_loads_is_served_with_its_type(client: TestClient) -> None:
    """Each module imported by another, each stylesheet: served, as JavaScript or CSS (a module served as
    anything else is refused by the browser)."""
    names = sorted(path.name for path in STATIC_DIR.iterdir() if path.suffix in (".js", ".css"))
    assert {"app.js", "api.js", "sse.js", "charts.js", "style.css"} <= set(names)
    for name in names:
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        expected = "text/css" if name.endswith(".css") else "text/javascript"
        assert response.headers["content-type"] == f"{expected}; charset=utf-8", name
        assert response.headers["cache-control"] == "no-cache" and response.headers["etag"], name
        assert response.content == (STATIC_DIR / name).read_bytes(), name


def test_plotly_comes_from_the_installed_package_gzipped_and_cached(client: TestClient) -> None:
    response = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["content-encoding"] == "gzip" and "Accept-Encoding" in response.headers["vary"]
    assert response.headers["cache-control"].startswith("public, max-age=")
    # httpx decompressed it: the package's file, byte for byte, sent in far fewer bytes.
    assert response.content == PLOTLY_JS.read_bytes()
    assert int(response.headers["content-length"]) < len(response.content) / 2

    again = client.get(
        "/ui/vendor/plotly.min.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b""


def test_a_client_without_gzip_gets_the_plain_file_under_another_etag(client: TestClient) -> None:
    compressed = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    for accept in ("identity", "gzip;q=0"):
        plain = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": accept})
        assert "content-encoding" not in plain.headers, accept
        assert plain.content == PLOTLY_JS.read_bytes()
        assert plain.headers["etag"] != compressed.headers["etag"]
        # The compressed representation's tag does not validate the plain one.
        stale = client.get(
            "/ui/vendor/plotly.min.js",
            headers={"Accept-Encoding": accept, "If-None-Match": compressed.headers["etag"]},
        )
        assert stale.status_code == 200


def test_the_page_compressed_is_the_page(client: TestClient) -> None:
    response = client.get("/ui/run.js", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    raw = client.build_request("GET", "/ui/run.js", headers={"Accept-Encoding": "gzip"})
    with client.stream(raw.method, raw.url, headers=raw.headers) as streamed:
        body = b"".join(streamed.iter_raw())
    assert gzip.decompress(body) == (STATIC_DIR / "run.js").read_bytes()


def test_nothing_else_is_served(client: TestClient) -> None:
    for path in ("/ui/nothing.js", "/ui/index.html", "/ui/..%2Fassets.py", "/ui/vendor/other.js", "/ui/x.py"):
        response = client.get(path)
        assert response.status_code in (404, 422), path
        assert response.headers["content-type"] == "application/json", path
        assert set(response.json()["error"]) == {"type", "message", "param"}, path


def test_serving_plotly_imports_no_plotly_or_numpy() -> None:
    """The file is found by path: the API process imports neither plotly's Python side nor numpy."""
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from fastapi import FastAPI\n"
        "from app.ui.routes import router\n"
        "app = FastAPI(); app.include_router(router)\n"
        "assert TestClient(app).get('/ui/vendor/plotly.min.js').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', 'numpy')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_icon_is_ours_wherever_a_browser_looks_for_it(client: TestClient) -> None:
    """The page links /ui/favicon.svg; a browser on a page without the link asks /favicon.ico."""
    icon = (STATIC_DIR / "favicon.svg").read_bytes()
    for path in ("/favicon.ico", "/ui/favicon.ico", "/ui/favicon.svg"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "image/svg+xml" and response.content == icon, path
