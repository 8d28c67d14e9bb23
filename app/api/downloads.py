"""File downloads with HTTP caching and byte ranges (RFC 9110, sections 13 and 14).

``If-None-Match`` is answered here (304), and a ``Range`` header is checked here so that a malformed or
unsatisfiable one gets the API's error body (400, 416); the file itself is then served by Starlette's
``FileResponse``, which answers ranges with 206 (one part, or multipart/byteranges).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import Request, Response, status
from fastapi.responses import FileResponse, JSONResponse

from app.api.schemas import ErrorDetail, ErrorResponse
from app.errors import BadRequest

__all__ = ["etag_matches", "file_download", "parse_byte_ranges"]

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(ValueError):
    pass


def parse_byte_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """The ranges of a ``Range: bytes=...`` header as ``(first, last)`` byte positions, inclusive, within a
    file of ``size`` bytes (``a-b``, ``a-`` and the suffix form ``-n``). BadRequest (param ``Range``) when
    it is malformed; RangeNotSatisfiable when a range starts at or past the end of the file."""
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        raise BadRequest("invalid Range header: use bytes=<first>-<last>", param="Range")
    ranges = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if match is None or match.group(1) == match.group(2) == "":
            raise BadRequest(f"invalid Range header: {part.strip()!r} is not a byte range", param="Range")
        first_text, last_text = match.groups()
        if first_text == "":  # the last n bytes
            suffix = int(last_text)
            if suffix == 0:
                raise RangeNotSatisfiable(part)
            first, last = max(size - suffix, 0), size - 1
        else:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
            if last_text and int(last_text) < first:
                raise BadRequest(
                    f"invalid Range header: {part.strip()!r} ends before it starts", param="Range"
                )
        if first >= size:
            raise RangeNotSatisfiable(part)
        ranges.append((first, last))
    return ranges


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, ``*`` matches anything)."""
    if if_none_match is None:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def file_download(request: Request, path: Path, *, filename: str, sha256: str, media_type: str) -> Response:
    """``path`` as a download named ``filename``, its ``sha256`` as the ETag and ``X-Content-SHA256``."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "X-Content-SHA256": sha256}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    stat_result = os.stat(path)
    range_header = request.headers.get("range")
    if range_header is not None:
        try:
            parse_byte_ranges(range_header, stat_result.st_size)
        except RangeNotSatisfiable:
            detail = ErrorDetail(
                type="range_not_satisfiable",
                message=f"the range is outside the {stat_result.st_size}-byte file",
                param="Range",
            )
            return JSONResponse(
                ErrorResponse(error=detail).model_dump(),
                status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
                headers={"Content-Range": f"bytes */{stat_result.st_size}"},
            )
    return FileResponse(
        path, media_type=media_type, filename=filename, headers=headers, stat_result=stat_result
    )
