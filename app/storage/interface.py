"""The storage interface: what the services and the worker ask of artifact storage, whatever holds it.

Keys are relative POSIX paths built from row ids by :mod:`app.storage.keys` (never taken from user input),
and are checked anyway: no absolute paths, no ``..``, no empty or hidden (``.``-prefixed) components.

Writes are all-or-nothing: data goes to a temporary name and appears under its key only on ``commit()``;
leaving the ``with`` block without committing removes it.

Processes that need files on their own disk (the worker trains from and into directories; the API reads a
base model's config) ask for them: :meth:`Storage.fetch` (a read-only local copy of inputs),
:meth:`Storage.workspace` (a run's directory, mirrored), :meth:`Storage.local_cache_dir` (data each process
may rebuild). With local storage these are the storage's own files; with S3 (:mod:`app.storage.s3`) they
live in the process's cache directory (``STORAGE_CACHE_DIR``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Protocol, Self

__all__ = [
    "DiscardedUnlessCommitted",
    "Pending",
    "PendingObject",
    "PendingTree",
    "Storage",
    "StorageError",
    "StorageKeyError",
    "StoredFile",
    "Workspace",
    "validate_key",
]


class StorageKeyError(ValueError):
    """A key that could escape the storage root or clash with its internals."""


class StorageError(OSError):
    """The storage backend failed: unreachable, refused the credentials, or answered with an error (a
    missing key is FileNotFoundError instead)."""


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


@dataclass(frozen=True)
class StoredFile:
    """A file under a directory in storage: ``name`` relative to the directory (POSIX), ``size`` in
    bytes, ``modified_ns`` when it was written (nanoseconds since the epoch; S3: the upload's second),
    ``etag`` the backend's identity of its content ("" for local storage)."""

    name: str
    size: int
    modified_ns: int
    etag: str = ""


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


class DiscardedUnlessCommitted:
    """The ``with`` block every :class:`Pending` of a backend shares: leaving it calls :meth:`abort`,
    which discards what was not committed (a no-op after :meth:`commit`)."""

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class PendingObject(Pending, Protocol):
    """A file being written."""

    bytes_written: int

    def write(self, data: bytes) -> None: ...


class PendingTree(Pending, Protocol):
    """A directory being filled through its local ``path``."""

    path: Path


class Workspace(Protocol):
    """A directory in storage that a process works in locally (a run's directory, while it trains):
    ``path`` is the local directory. :meth:`pull` makes ``path`` what storage holds, :meth:`push` makes
    storage what ``path`` holds. With local storage ``path`` is the storage's directory and both are
    no-ops."""

    key: str
    path: Path

    def pull(self) -> None:
        """Make the local directory a copy of the storage directory: download what is new or changed,
        remove local files storage does not have."""
        ...

    def push(
        self,
        relative: str = "",
        *,
        last: Collection[str] = (),
        skip: Callable[[PurePosixPath], bool] | None = None,
    ) -> None:
        """Make the storage directory ``relative`` (the whole workspace by default) a copy of the local
        one: upload what is new or changed (files named in ``last`` after every other one of their
        directory: a manifest that marks a directory complete), delete what is gone locally. Paths for
        which ``skip`` (given the path relative to ``relative``) is true are neither uploaded nor
        deleted."""
        ...

    def release(self) -> None:
        """Free the local copy (S3: remove it from the cache; local storage: nothing)."""
        ...


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

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        """The file ``key`` positioned at byte ``start``; reading past ``end`` (exclusive) is not
        guaranteed to return more. FileNotFoundError when it is missing (S3: at the first read)."""
        ...

    def list_files(self, key: str) -> list[StoredFile]:
        """The regular files under the directory ``key``, sorted by name; [] when it is missing."""
        ...

    def fetch(self, key: str, *, include: Callable[[str], bool] | None = None) -> Path:
        """A local, read-only copy of the file or directory ``key`` (of its files whose relative name
        ``include`` accepts), named like the key's last component. Local storage: the file itself. S3: a
        copy in the cache, kept under the key and the fingerprint of its files (names, sizes, ETags), so
        that a changed object is fetched again. FileNotFoundError when it is missing."""
        ...

    def workspace(self, key: str) -> Workspace:
        """The directory ``key`` as a local working copy (see :class:`Workspace`); nothing is copied
        until :meth:`Workspace.pull`."""
        ...

    def local_cache_dir(self, key: str) -> Path:
        """A local directory for data derived from storage that a process may rebuild (the prepared-data
        cache): the storage's own directory ``key`` with local storage (shared by every worker), one in
        the process's cache directory with S3."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Bytes of the file ``key``, or of all files under the directory ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the file or the whole directory ``key``; a missing key is not an error."""
        ...

    def presigned_url(self, key: str, *, expires_seconds: int, filename: str | None = None) -> str | None:
        """A URL that lets its holder GET the file ``key`` for ``expires_seconds`` without credentials
        (``filename`` offered as its download name); None when the backend has no such thing."""
        ...

    def remove_stale_temporaries(self, older_than: float) -> list[str]:
        """Remove the temporary files and directories of writes that nothing has written to for
        ``older_than`` seconds (left by a process that died mid-write; younger ones belong to writes in
        progress, and are kept). Returns their names."""
        ...
