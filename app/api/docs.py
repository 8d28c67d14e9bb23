"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with every asset served by
the API itself: the machines it runs on are often offline, and FastAPI's own pages load their JavaScript
and CSS from a CDN (a blank page without one).

The assets are the files the installed ``fastapi-offline`` package ships (``fastapi_offline/static``:
Swagger UI 5, which reads OpenAPI 3.1, and ReDoc's standalone bundle), mounted at :data:`ASSETS_URL`; the
pages are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``), pointed at them, as FastAPI documents
for self-hosted docs. ReDoc's Google fonts are left out (the system's fonts are used).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "ASSETS_URL", "DOCS_URL", "REDOC_URL", "assets_directory", "use_offline_docs"]

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
# The files of the pages, by what they are: each is a file of assets_directory().
ASSETS = {
    "swagger_js": "swagger-ui-bundle.js",
    "swagger_css": "swagger-ui.css",
    "redoc_js": "redoc.standalone.js",
    "favicon": "favicon.png",
}


def assets_directory() -> Path:
    """The installed package's directory of documentation assets; a missing file is an install problem,
    reported when the app is built rather than as a blank page."""
    directory = Path(str(files("fastapi_offline") / "static"))
    missing = [name for name in ASSETS.values() if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the fastapi-offline package lacks {', '.join(missing)} in {directory}: reinstall it"
        )
    return directory


def use_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs``, its OAuth2 redirect page and ``/redoc`` with local assets (the app is built with
    ``docs_url=None, redoc_url=None``: FastAPI's own pages would load them from a CDN)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    def asset(request: Request, kind: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{ASSETS[kind]}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=asset(request, "swagger_js"),
            swagger_css_url=asset(request, "swagger_css"),
            swagger_favicon_url=asset(request, "favicon"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc_js"),
            redoc_favicon_url=asset(request, "favicon"),
            with_google_fonts=False,
        )
