"""Artifact storage: corpora, uploaded checkpoints, prepared data and runs' files.

:mod:`app.storage.interface` is what callers use, :mod:`app.storage.keys` names every key,
:func:`get_storage` builds the backend of ``STORAGE_URL`` (a local directory; S3 later behind the same
interface), and :func:`sweep_stale_uploads` removes what writes left behind when their process died.
"""

from __future__ import annotations

from app.config import Settings
from app.storage.interface import (
    Pending,
    PendingObject,
    PendingTree,
    Storage,
    StorageKeyError,
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
    "StorageKeyError",
    "get_storage",
    "sweep_stale_uploads",
    "validate_key",
]


def get_storage(settings: Settings) -> Storage:
    """The storage named by ``STORAGE_URL``."""
    return LocalStorage.from_url(settings.storage_url)
