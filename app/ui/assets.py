"""The files the dashboard's page loads, answered as a browser caches them best.

Two kinds: the dashboard's own files (``app/ui/static/``: HTML, JavaScript modules, CSS, no build step), and
third-party JavaScript read from the installed package that ships it (:data:`PLOTLY`: Plotly.js, from the
``plotly`` wheel), never copied into the repository nor fetched from a CDN. Each is answered with a strong
ETag (a 304 to a matching ``If-None-Match``), gzip-compressed when the client accepts it (the app compresses
nothing else: downloads are ranged and streams are live), and ``Vary: Accept-Encoding``.

A package's file is found by path: :func:`importlib.util.find_spec` locates a top-level package without
running its ``__init__``, so the API never imports the package's Python side (plotly's can bring in numpy
and pandas, which the API must stay free of; only its JavaScript file is wanted here).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import Request, Response

from app.errors import NotFound, ServiceUnavailable

__all__ = ["PLOTLY", "STATIC_DIR", "Asset", "PackageFile", "asset_response", "static_asset"]

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The dashboard's own files change with each release of bertpt: the browser asks again each time (a
# 304 costs a round trip). A package's file changes only when the package does.
REVALIDATE = "no-cache"
PACKAGE_MAX_AGE = "public, max-age=86400"
# Smaller files gain little from compression.
GZIP_MIN_BYTES = 1024


@dataclass(frozen=True)
class Asset:
    """A file to answer with: where it is, its media type and cache policy."""

    path: Path
    media_type: str
    cache_control: str


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside an installed Python package, e.g. ``plotly``'s
    ``package_data/plotly.min.js``; ``install`` says how to get it."""

    package: str
    relative_path: str
    media_type: str
    install: str

    def asset(self) -> Asset:
        """The file as installed; ServiceUnavailable (503) naming what to install when it is not."""
        spec = importlib.util.find_spec(self.package)  # locates; does not import the package
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            path = Path(location) / self.relative_path
            if path.is_file():
                return Asset(path, self.media_type, PACKAGE_MAX_AGE)
        raise ServiceUnavailable(
            f"the dashboard's charts need {self.package}/{self.relative_path}, which is not installed: "
            f"{self.install}"
        )


PLOTLY = PackageFile(
    package="plotly",
    relative_path="package_data/plotly.min.js",
    media_type=MEDIA_TYPES[".js"],
    install="pip install plotly (a dependency of bertpt)",
)


def static_asset(name: str) -> Asset:
    """The dashboard's own file ``name`` (a file directly in ``static/``, with a known type); NotFound
    otherwise (no path leads out of the folder: the name is looked up among the folder's entries)."""
    path = STATIC_DIR / name
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None or name not in _static_names():
        raise NotFound("dashboard file", name, param="name")
    return Asset(path, media_type, REVALIDATE)


def _static_names() -> frozenset[str]:
    return frozenset(entry.name for entry in STATIC_DIR.iterdir() if entry.is_file())


@dataclass(frozen=True)
class _Body:
    """A file's bytes, plain and gzipped, with their ETags (one per representation, as HTTP wants)."""

    plain: bytes
    gzipped: bytes | None  # None: not worth compressing
    etag: str

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '-gz"'


@lru_cache(maxsize=32)
def _body(path: Path, mtime_ns: int, size: int) -> _Body:
    """Read (and compress) a file once per process and version of the file (its mtime and size are part of
    the key, so an edited file is read again)."""
    plain = path.read_bytes()
    gzipped = gzip.compress(plain, compresslevel=6, mtime=0) if len(plain) >= GZIP_MIN_BYTES else None
    return _Body(plain, gzipped, f'"{hashlib.sha256(plain).hexdigest()[:32]}"')


def asset_response(request: Request, asset: Asset, *, headers: dict[str, str] | None = None) -> Response:
    """``asset`` as the request accepts it: 304 when its ``If-None-Match`` names the representation, the
    gzipped bytes when it accepts gzip, the plain bytes otherwise. Reads the file the first time (call it
    from a worker thread: a large file takes a moment to compress)."""
    stat = asset.path.stat()
    body = _body(asset.path, stat.st_mtime_ns, stat.st_size)
    use_gzip = body.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = body.gzip_etag if use_gzip else body.etag
    response_headers = {"ETag": etag, "Cache-Control": asset.cache_control, "Vary": "Accept-Encoding"}
    response_headers |= headers or {}
    matching = _etags(request.headers.get("if-none-match", ""))
    if etag in matching or "*" in matching:
        return Response(status_code=304, headers=response_headers)
    if use_gzip:
        assert body.gzipped is not None
        response_headers["Content-Encoding"] = "gzip"
        return Response(body.gzipped, media_type=asset.media_type, headers=response_headers)
    return Response(body.plain, media_type=asset.media_type, headers=response_headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params.strip().startswith("q=") and _float(q) == 0.0)
    return False


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _etags(if_none_match: str) -> list[str]:
    """The entity tags of an ``If-None-Match`` value, weak ones compared as strong (RFC 9110 13.1.2)."""
    return [tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()]
