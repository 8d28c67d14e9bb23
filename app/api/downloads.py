"""Downloads streamed with HTTP caching and byte ranges (RFC 9110, sections 13 and 14).

A body is served from its size, its entity tag and its bytes on demand (:class:`RangedBody`, e.g. a run's
archive, :class:`app.runs.download_archive.StreamedArchive`): ``If-None-Match`` is answered with 304,
``Range`` with 206 (one part, or ``multipart/byteranges``) when ``If-Range`` (if sent) names the current
entity tag, a malformed or unsatisfiable range with the API's error body (400, 416), ``HEAD`` with the
headers alone. Nothing is read before the first byte is sent.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Protocol
from urllib.parse import quote

from fastapi import Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.schemas import ErrorDetail, ErrorResponse
from app.errors import BadRequest

__all__ = ["RangedBody", "etag_matches", "parse_byte_ranges", "streamed_download"]

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
# More ranges than this in one request are ignored (the whole body is sent), as RFC 9110 (14.2) allows for
# "a set of many small ranges": each part would cost a pass over the files it covers.
_MAX_RANGES = 32


class RangedBody(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def etag(self) -> str:
        """The entity tag, unquoted: the same for the same bytes, another for other bytes."""
        ...

    @property
    def sha256(self) -> str | None:
        """The digest of the whole body, when known."""
        ...

    def read(self, first: int, last: int) -> Iterator[bytes]:
        """The bytes ``first`` to ``last``, inclusive."""
        ...

    def whole(self) -> Iterator[bytes]:
        """Every byte, in order."""
        ...


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


def streamed_download(request: Request, body: RangedBody, *, filename: str, media_type: str) -> Response:
    """``body`` as a download named ``filename``: its entity tag as the ETag, its sha256 (when known) as
    ``X-Content-SHA256``."""
    etag = f'"{body.etag}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": _attachment(filename)}
    if body.sha256 is not None:
        headers["X-Content-SHA256"] = body.sha256
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    range_header = request.headers.get("range")
    ranges = None
    if range_header is not None and _if_range_holds(request.headers.get("if-range"), etag):
        try:
            ranges = parse_byte_ranges(range_header, body.size)
        except RangeNotSatisfiable:
            detail = ErrorDetail(
                type="range_not_satisfiable",
                message=f"the range is outside the {body.size}-byte file",
                param="Range",
            )
            return JSONResponse(
                ErrorResponse(error=detail).model_dump(),
                status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
                headers={"Content-Range": f"bytes */{body.size}"},
            )
    send_body = request.method != "HEAD"
    if ranges is None or len(ranges) > _MAX_RANGES:
        return _streamed(
            status.HTTP_200_OK, media_type, headers, body.size, body.whole() if send_body else None
        )
    if len(ranges) == 1:
        ((first, last),) = ranges
        headers["Content-Range"] = f"bytes {first}-{last}/{body.size}"
        chunks = body.read(first, last) if send_body else None
        return _streamed(status.HTTP_206_PARTIAL_CONTENT, media_type, headers, last - first + 1, chunks)
    boundary = secrets.token_hex(16)
    part_type = f"Content-Type: {media_type}\r\nContent-Range: bytes"
    parts = [
        (f"--{boundary}\r\n{part_type} {first}-{last}/{body.size}\r\n\r\n".encode(), first, last)
        for first, last in ranges
    ]
    end = f"--{boundary}--\r\n".encode()
    length = sum(len(part_head) + last - first + 1 + 2 for part_head, first, last in parts) + len(end)

    def multipart() -> Iterator[bytes]:
        for part_head, first, last in parts:
            yield part_head
            yield from body.read(first, last)
            yield b"\r\n"
        yield end

    return _streamed(
        status.HTTP_206_PARTIAL_CONTENT,
        f"multipart/byteranges; boundary={boundary}",
        headers,
        length,
        multipart() if send_body else None,
    )


def _if_range_holds(if_range: str | None, etag: str) -> bool:
    """Whether a range request is to be answered with the range: no ``If-Range``, or one naming the
    current entity tag (strong comparison; a date never matches, as the body has no Last-Modified)."""
    return if_range is None or if_range.strip() == etag


def _attachment(filename: str) -> str:
    quoted = quote(filename)
    return (
        f'attachment; filename="{filename}"'
        if quoted == filename
        else f"attachment; filename*=utf-8''{quoted}"
    )


def _streamed(
    status_code: int, media_type: str, headers: dict[str, str], length: int, chunks: Iterator[bytes] | None
) -> Response:
    """A response of ``length`` bytes sent from ``chunks`` as they come (the headers alone for None)."""
    headers = {**headers, "Content-Length": str(length)}
    if chunks is None:
        return Response(status_code=status_code, media_type=media_type, headers=headers)
    return StreamingResponse(chunks, status_code=status_code, media_type=media_type, headers=headers)
