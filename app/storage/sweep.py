"""The sweep of abandoned temporary files: what an upload (or any other write to storage) leaves in the
storage's temporary area when its process dies mid-write (killed, out of memory, stopped by SIGKILL after
its grace period). A write that fails in a living process removes its own; these are the rest."""

from __future__ import annotations

from app.storage.interface import Storage

__all__ = ["sweep_stale_uploads"]


def sweep_stale_uploads(storage: Storage, older_than: float) -> list[str]:
    """Remove the temporary files and directories nothing has written to for ``older_than`` seconds
    (``STALE_UPLOAD_SECONDS``), keeping younger ones: they belong to uploads in progress, in this process
    or another sharing the storage. Called at the API's start and by the periodic housekeeping (a chore:
    it returns what it removed, for the log)."""
    return [f"removed {name}" for name in storage.remove_stale_temporaries(older_than)]
