"""The storage interface: what the services and the worker ask of artifact storage, whatever holds it.

Keys are relative POSIX paths built from row ids by :mod:`app.storage.keys` (never taken from user input),
and are checked anyway: no absolute paths, no ``..``, no empty or hidden (``.``-prefixed) components.

Writes are all-or-nothing: data goes to a temporary name and appears under its key only on ``commit()``;
leaving the ``with`` block without committing removes it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Protocol, Self

__all__ = ["Pending", "PendingObject", "PendingTree", "Storage", "StorageKeyError", "validate_key"]


class StorageKeyError(ValueError):
    """A key that could escape the storage root or clash with its internals."""


def validate_key(key: str) -> PurePosixPath:
    """``key`` as a relative path, or :class:`StorageKeyError`."""
    if not key or "\\" in key or "\x00" in key:
        raise StorageKeyError(f"invalid storage key {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or key.startswith("/"):
        raise StorageKeyError(f"storage key {key!r} is absolute")
    parts = key.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise StorageKeyError(f"storage key {key!r} has an empty, '.', '..' or hidden component")
    return path


class Pending(Protocol):
    """Something being stored under ``key``: it appears there on :meth:`commit`; :meth:`abort`, or leaving
    the ``with`` block without a commit, discards it."""

    key: str

    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PendingObject(Pending, Protocol):
    """A file being written."""

    bytes_written: int

    def write(self, data: bytes) -> None: ...


class PendingTree(Pending, Protocol):
    """A directory being filled through its local ``path``."""

    path: Path


class Storage(Protocol):
    def open_write(self, key: str) -> PendingObject:
        """Start writing the file ``key``."""
        ...

    def open_tree(self, key: str) -> PendingTree:
        """Start building the directory ``key``."""
        ...

    def scratch_dir(self) -> contextlib.AbstractContextManager[Path]:
        """A private local directory for intermediate files, removed at the end of the block."""
        ...

    def open_read(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Bytes of the file ``key``, or of all files under the directory ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the file or the whole directory ``key``; a missing key is not an error."""
        ...

    def local_path(self, key: str) -> Path:
        """A local filesystem path for ``key`` (the worker trains from and into directories)."""
        ...

    def remove_stale_temporaries(self, older_than: float) -> list[str]:
        """Remove the temporary files and directories of writes that nothing has written to for
        ``older_than`` seconds (left by a process that died mid-write; younger ones belong to writes in
        progress, and are kept). Returns their names."""
        ...
