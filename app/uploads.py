"""What the upload services read: a file arriving in chunks, plus the form fields sent with it; and the
caps on what a compressed upload may inflate to, with the one error a client gets when one is broken.

The API implements it on top of the raw multipart request stream (``app.api.multipart``), so a large
upload is validated while it arrives and never held in memory or spooled to a second temporary file;
:class:`LocalFileUpload` serves scripts and tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from app.errors import PayloadTooLarge
from worker.pretraining.inflate import InflateLimitExceeded

__all__ = [
    "CHUNK_SIZE",
    "IncomingFile",
    "IncomingFilePart",
    "IncomingFiles",
    "LocalFileUpload",
    "clean_filename",
    "inflated_too_much",
]

CHUNK_SIZE = 1 << 20


class IncomingFile(Protocol):
    @property
    def filename(self) -> str:
        """The client's file name (used for its extension and as a default display name only)."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, in order, in chunks of about :data:`CHUNK_SIZE`; can be iterated once."""
        ...

    def fields(self) -> Mapping[str, str]:
        """The text fields sent with the file. Complete once :meth:`chunks` is exhausted (a field may
        follow the file in the request)."""
        ...


class IncomingFilePart(Protocol):
    """One of several files of an upload: ``field`` names its form field."""

    @property
    def field(self) -> str: ...

    @property
    def filename(self) -> str: ...

    def chunks(self) -> Iterator[bytes]: ...


class IncomingFiles(Protocol):
    """An upload of one or more files (a labelled dataset and its test file), plus its text fields."""

    def files(self) -> Iterator[IncomingFilePart]:
        """The files in the order they arrive; each one's chunks are read before the next is asked for."""
        ...

    def fields(self) -> Mapping[str, str]:
        """The text fields; complete once :meth:`files` is exhausted."""
        ...


class LocalFileUpload:
    """A local file presented as an upload."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._filename = filename or self.path.name
        self._fields = dict(fields or {})

    @property
    def filename(self) -> str:
        return self._filename

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as stream:
            while chunk := stream.read(CHUNK_SIZE):
                yield chunk

    def fields(self) -> Mapping[str, str]:
        return self._fields


def clean_filename(filename: str) -> str:
    """The last component of a client-supplied name (browsers and curl may send a path), at most 255
    characters. For display and extension checks only: storage keys never use it."""
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    return name[-255:]


def inflated_too_much(
    exc: InflateLimitExceeded, *, what: str, filename: str, size_setting: str
) -> PayloadTooLarge:
    """The 413 of an upload that decompresses beyond a cap (its size: ``size_setting``, or
    ``MAX_COMPRESSION_RATIO``), naming the file and the setting."""
    setting = size_setting if exc.cap == "size" else "MAX_COMPRESSION_RATIO"
    advice = "make it smaller" if exc.cap == "size" else "is it a decompression bomb? Upload it uncompressed"
    return PayloadTooLarge(
        exc.limit,
        param="file",
        setting=setting,
        message=f"the {what} {filename!r} is refused: {exc} ({setting}); {advice}, or ask the operator to "
        "raise the limit",
    )
