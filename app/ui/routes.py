"""The dashboard's routes (not in the OpenAPI schema: they serve a page, not the API): ``/`` and ``/ui``
redirect to ``/ui/``, the page; ``/ui/{name}`` its own files; ``/ui/vendor/plotly.min.js`` the charting
library from the installed ``plotly`` package (:mod:`app.ui.assets`); ``/favicon.ico`` (and
``/ui/favicon.ico``, where a browser looks without a page's ``<link rel="icon">``) the page's icon, an SVG.

None of them needs a key: the page holds no data. It asks for the user's API key and sends it, as the
``Authorization`` header, to the REST API, which is all it reads and writes through.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse

from app.ui.assets import PLOTLY, asset_response, static_asset

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

router = APIRouter(include_in_schema=False)

# The page runs only its own scripts and talks only to this origin. Plotly sets inline styles on what it
# draws (and adds a stylesheet of its own): styles may be inline, scripts may not.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

StaticName = Annotated[
    str, Path(pattern=r"^[a-z0-9-]+\.(js|css|svg)$", description="A file of the dashboard.")
]
# The icon, drawn for bertpt (app/ui/static/favicon.svg).
FAVICON = "favicon.svg"


@router.get("/")
@router.get("/ui")
async def to_dashboard() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def dashboard(request: Request) -> Response:
    return asset_response(request, static_asset("index.html"), headers=_PAGE_HEADERS)


@router.get("/favicon.ico")
@router.get("/ui/favicon.ico")
def favicon(request: Request) -> Response:
    return asset_response(request, static_asset(FAVICON), headers={"X-Content-Type-Options": "nosniff"})


@router.get("/ui/vendor/plotly.min.js")
def plotly_js(request: Request) -> Response:
    return asset_response(request, PLOTLY.asset(), headers={"X-Content-Type-Options": "nosniff"})


@router.get("/ui/{name}")
def dashboard_file(name: StaticName, request: Request) -> Response:
    return asset_response(request, static_asset(name), headers={"X-Content-Type-Options": "nosniff"})
