"""Artifact storage: corpora, uploaded checkpoints, prepared data and runs' files.

:mod:`app.storage.interface` is what callers use, :mod:`app.storage.keys` names every key,
:func:`get_storage` builds the backend of ``STORAGE_URL`` (a local directory, :mod:`app.storage.local`, or
an S3-compatible bucket, :mod:`app.storage.s3`), and :func:`sweep_stale_uploads` removes what writes left
behind when their process died.
"""

from __future__ import annotations

from app.config import Settings
from app.storage.interface import (
    Pending,
    PendingObject,
    PendingTree,
    Storage,
    StorageError,
    StorageKeyError,
    StoredFile,
    Workspace,
    validate_key,
)
from app.storage.local import LocalStorage
from app.storage.sweep import sweep_stale_uploads

__all__ = [
    "LocalStorage",
    "Pending",
    "PendingObject",
    "PendingTree",
    "Storage",
    "StorageError",
    "StorageKeyError",
    "StoredFile",
    "Workspace",
    "get_storage",
    "sweep_stale_uploads",
    "validate_key",
]


def get_storage(settings: Settings) -> Storage:
    """The storage named by ``STORAGE_URL``; with S3, its cache in ``STORAGE_CACHE_DIR``."""
    if settings.storage_url.startswith("s3://"):
        from app.storage.s3 import S3Storage  # boto3, loaded by the processes that use it

        return S3Storage.from_url(
            settings.storage_url, cache_dir=settings.storage_cache_dir, part_bytes=settings.storage_part_bytes
        )
    return LocalStorage.from_url(settings.storage_url)
