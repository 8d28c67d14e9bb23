"""File uploads as the API takes them (``multipart/form-data``, the file in the field ``file``), streamed
from disk in 64 KiB pieces, never read whole into memory, with a progress callback.

The API caps the uploads it reads at once and answers 429 with ``Retry-After`` when they are all taken:
the upload is sent again after that many seconds (at most :data:`MAX_RETRY_AFTER_SECONDS`), as often as
the client's :class:`~bertpt.client.client.Retries` allow.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

from bertpt.client.errors import ApiError

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = ["MAX_RETRY_AFTER_SECONDS", "Progress", "upload_files"]

# A progress callback: (bytes sent so far, bytes in all).
Progress = Callable[[int, int], None]
MAX_RETRY_AFTER_SECONDS = 60.0


class _ProgressFile:
    """A file opened for reading that reports, on every read, how far all the files of one upload are."""

    def __init__(self, stream: IO[bytes], on_position: Callable[[int], None]) -> None:
        self._stream = stream
        self._on_position = on_position

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self._on_position(self._stream.tell())
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._stream.seek(offset, whence)
        self._on_position(position)
        return position

    def tell(self) -> int:
        return self._stream.tell()

    def fileno(self) -> int:  # httpx learns the length (Content-Length) from it
        return self._stream.fileno()


def upload_files(
    client: Client,
    path: str,
    files: Mapping[str, Path],
    fields: Mapping[str, str | None],
    progress: Progress | None = None,
) -> httpx.Response:
    """POST the ``files`` (multipart field name -> local file) and the text ``fields`` (None left out) to
    ``path``; ``progress(sent, total)`` is called as the files are read out to the connection (``total``:
    their sizes added up). Returns the API's answer; ApiError as :meth:`Client.request` raises it (and
    OSError when a file cannot be opened)."""
    total = sum(file.stat().st_size for file in files.values())
    positions = dict.fromkeys(files, 0)
    reported = [-1]

    def moved(name: str) -> Callable[[int], None]:
        def on_position(position: int) -> None:
            positions[name] = position
            sent = sum(positions.values())
            if progress is not None and sent != reported[0]:
                reported[0] = sent
                progress(sent, total)

        return on_position

    data = {name: value for name, value in fields.items() if value is not None}
    failures = 0
    while True:
        with contextlib.ExitStack() as stack:
            opened = {name: stack.enter_context(file.open("rb")) for name, file in files.items()}
            multipart: dict[str, Any] = {
                name: (files[name].name, _ProgressFile(stream, moved(name)))
                for name, stream in opened.items()
            }
            try:
                return client.request("POST", path, files=multipart, data=data)
            except ApiError as exc:
                failures += 1
                if exc.status_code != 429 or failures > client.retries.attempts:
                    raise
                retry_after = min(MAX_RETRY_AFTER_SECONDS, exc.retry_after or 1.0)
        time.sleep(retry_after)
