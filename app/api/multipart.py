"""A multipart/form-data request read as it arrives, as an :class:`~app.uploads.IncomingFile`.

Starlette's ``request.form()`` first copies every file part into a temporary file, so a 2 GB upload
would be written to disk once before it could be checked, and the size cap would only bite afterwards.
Here python-multipart's push parser is fed straight from the request stream: the service validates and
stores each chunk as it comes, and stops reading (413/422) at the first byte too many or the first bad
line.

The services are synchronous; they run in a worker thread (:meth:`~app.api.upload_slots.UploadSlots.run`),
and each chunk of the body is fetched from the event loop with ``anyio.from_thread.run``. The process's
:class:`~app.api.upload_slots.UploadSlots` can stop an upload between two chunks, or while it waits for
one, when the process shuts down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from typing import Any

import anyio.from_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.api.upload_slots import UploadSlots
from app.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, ValidationFailed
from app.uploads import CHUNK_SIZE

__all__ = ["FilePart", "MultipartUpload", "multipart_request_body"]

MAX_FIELD_BYTES = 64 << 10
MAX_PARTS = 16
# Room for boundaries, part headers and the text fields on top of the file itself.
_BODY_OVERHEAD = MAX_PARTS * (MAX_FIELD_BYTES + 1024)


def multipart_request_body(
    fields: dict[str, str], *, file_description: str, other_files: dict[str, str] | None = None
) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of such an upload (FastAPI cannot infer it from ``Request``);
    ``other_files``: the optional file parts beside ``file``, with their descriptions."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": file_description}
    }
    properties.update(
        {
            name: {"type": "string", "format": "binary", "description": text}
            for name, text in (other_files or {}).items()
        }
    )
    properties.update({name: {"type": "string", "description": text} for name, text in fields.items()})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": ["file"]}
                }
            },
        }
    }


class FilePart:
    """One file part of the body, read as it arrives: ``field`` (its form field), ``filename`` (the
    client's), and :meth:`chunks`."""

    def __init__(self, field: str, filename: str, pump: Callable[[], None]) -> None:
        self.field = field
        self.filename = filename
        self.data: deque[bytes] = deque()  # parsed, not yet consumed, bytes of the part
        self.done = False
        self._pump = pump

    def chunks(self) -> Iterator[bytes]:
        """The part's bytes in chunks of :data:`~app.uploads.CHUNK_SIZE` (the last one shorter)."""
        buffer = bytearray()
        while True:
            while self.data and len(buffer) < CHUNK_SIZE:
                buffer += self.data.popleft()
            if len(buffer) >= CHUNK_SIZE:
                yield bytes(buffer[:CHUNK_SIZE])
                del buffer[:CHUNK_SIZE]
            elif self.done:
                if buffer:
                    yield bytes(buffer)
                return
            else:
                self._pump()


class MultipartUpload:
    """The one file part named ``file_field`` and the text fields around it; with ``other_file_fields``,
    up to one more file part for each of those names (:meth:`files`). Use from a worker thread."""

    def __init__(
        self,
        request: Request,
        *,
        max_bytes: int,
        uploads: UploadSlots,
        file_field: str = "file",
        other_file_fields: Collection[str] = (),
    ) -> None:
        self.file_field = file_field
        self._file_fields = (file_field, *other_file_fields)
        self._uploads = uploads
        content_type = request.headers.get("content-type", "")
        media_type, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            raise BadRequest(
                f"send the upload as multipart/form-data with the file in a field named {file_field!r} "
                f"(got content type {content_type or 'none'!r})"
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + _BODY_OVERHEAD:
            raise PayloadTooLarge(max_bytes, param=file_field)  # refused before reading a byte
        self._stream: AsyncIterator[bytes] = request.stream().__aiter__()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
            },
        )
        self._fields: dict[str, str] = {}
        self._files: list[FilePart] = []  # in the order they arrive
        self._file: FilePart | None = None  # the file part being parsed
        self._eof = False
        self._parts = 0
        # the part being parsed
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._field_name = ""
        self._field_value = bytearray()

    # -- IncomingFile -----------------------------------------------------------------------------

    @property
    def filename(self) -> str:
        return self._main_file().filename

    def chunks(self) -> Iterator[bytes]:
        yield from self._main_file().chunks()

    def fields(self) -> Mapping[str, str]:
        while not self._eof:
            self._pump()
            for part in self._files:
                part.data.clear()  # a caller asking for the fields has read the files it wanted
        return self._fields

    def files(self) -> Iterator[FilePart]:
        """The file parts, in the order they arrive; read each one's chunks before asking for the next (or
        its bytes are held in memory)."""
        index = 0
        while True:
            while len(self._files) <= index:
                if self._eof:
                    return
                self._pump()
            yield self._files[index]
            index += 1

    def _main_file(self) -> FilePart:
        while True:
            for part in self._files:
                if part.field == self.file_field:
                    return part
            if self._eof:
                raise ValidationFailed(
                    self.file_field, f"no file: send it in a form field named {self.file_field!r}"
                )
            self._pump()

    # -- reading ----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Feed the parser the next chunk of the request body."""
        if self._eof:
            raise BadRequest("the multipart body ended early")
        self._uploads.check_running()
        try:
            chunk = anyio.from_thread.run(self._next_chunk)
        except ClientDisconnect:
            raise BadRequest("the client disconnected during the upload") from None
        try:
            if chunk is None:
                self._parser.finalize()
                self._eof = True
                if self._file is not None:
                    raise BadRequest("the multipart body ended inside the file part")
            else:
                self._parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body ({exc})") from None

    async def _next_chunk(self) -> bytes | None:
        with self._uploads.reading():
            async for chunk in self._stream:
                if chunk:
                    return chunk
            return None
        raise ServiceUnavailable("the server is shutting down; the upload was stopped, send it again")

    # -- parser callbacks -------------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BadRequest(f"too many parts in the multipart body (at most {MAX_PARTS})")
        self._headers = {}
        self._field_value = bytearray()
        self._file = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise BadRequest("a multipart part has no Content-Disposition name")
        self._field_name = name.decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._field_name in self._file_fields:
            if any(part.field == self._field_name for part in self._files):
                raise BadRequest(f"more than one {self._field_name!r} part")
            self._file = FilePart(self._field_name, (filename or b"").decode("utf-8", "replace"), self._pump)
            self._files.append(self._file)
        elif filename is not None:
            expected = " or ".join(map(repr, self._file_fields))
            raise BadRequest(f"unexpected file in field {self._field_name!r}; send the file as {expected}")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.data.append(data[start:end])
            return
        self._field_value += data[start:end]
        if len(self._field_value) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        if self._file is not None:
            self._file.done = True
            self._file = None
        else:
            self._fields[self._field_name] = self._field_value.decode("utf-8", "replace")
