"""Storage in a local directory (``STORAGE_URL=file://...``). Temporary files live in ``<root>/.tmp`` so
that committing is a rename within one filesystem. Every process works in the storage's own files: a fetch
is the file itself, a workspace is the directory itself."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.storage.interface import DiscardedUnlessCommitted, StorageKeyError, StoredFile, validate_key

__all__ = ["LocalStorage"]

_TMP_DIR = ".tmp"


class _LocalPendingObject(DiscardedUnlessCommitted):
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self.bytes_written = 0
        self._final = storage.local_path(key)
        self._tmp = storage.new_temp_path(suffix=".part")
        self._file: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        self._done = False

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError(f"write to {self.key!r} after commit or abort")
        self._file.write(data)
        self.bytes_written += len(data)

    def commit(self) -> None:
        if self._file is None:
            raise RuntimeError(f"{self.key!r} was already committed or aborted")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, self._final)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)
        self._done = True


class _LocalPendingTree(DiscardedUnlessCommitted):
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self._final = storage.local_path(key)
        self.path = storage.new_temp_path(suffix=".dir")
        self.path.mkdir()
        self._done = False

    def commit(self) -> None:
        if self._done:
            raise RuntimeError(f"{self.key!r} was already committed or aborted")
        if self._final.exists():
            raise FileExistsError(f"storage key {self.key!r} already exists")
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path, self._final)
        self._done = True

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
            self._done = True


class _LocalWorkspace:
    """The storage's own directory: nothing to copy."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        self.path = path

    def pull(self) -> None:
        pass

    def push(
        self,
        relative: str = "",
        *,
        last: Collection[str] = (),
        skip: Callable[[PurePosixPath], bool] | None = None,
    ) -> None:
        pass

    def release(self) -> None:
        pass


class LocalStorage:
    """Storage in a local directory. Temporary files live in ``<root>/.tmp`` so that committing is a
    rename within one filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        if not url.startswith("file://"):
            raise ValueError(f"not a file:// URL: {url!r}")
        return cls(url.removeprefix("file://"))

    def local_path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # Keys are checked above; this also refuses a symlink planted inside the root.
        if not path.resolve().is_relative_to(self.root):
            raise StorageKeyError(f"storage key {key!r} resolves outside the storage root")
        return path

    def new_temp_path(self, *, suffix: str = "") -> Path:
        tmp = self.root / _TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{secrets.token_hex(12)}{suffix}"

    def open_write(self, key: str) -> _LocalPendingObject:
        return _LocalPendingObject(self, key)

    def open_tree(self, key: str) -> _LocalPendingTree:
        return _LocalPendingTree(self, key)

    @contextlib.contextmanager
    def scratch_dir(self) -> Iterator[Path]:
        path = self.new_temp_path(suffix=".scratch")
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        stream = open(self.local_path(key), "rb")  # noqa: SIM115 - the caller closes it
        if start:
            stream.seek(start)
        return stream

    def list_files(self, key: str) -> list[StoredFile]:
        directory = self.local_path(key)
        if not directory.is_dir():
            return []
        files = []
        for path in directory.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            files.append(StoredFile(path.relative_to(directory).as_posix(), stat.st_size, stat.st_mtime_ns))
        return sorted(files, key=lambda file: file.name)

    def fetch(self, key: str, *, include: Callable[[str], bool] | None = None) -> Path:
        """The file or directory itself (``include`` does not apply: nothing is copied)."""
        path = self.local_path(key)
        if not path.exists():
            raise FileNotFoundError(f"storage key {key!r} is missing")
        return path

    def workspace(self, key: str) -> _LocalWorkspace:
        return _LocalWorkspace(key, self.local_path(key))

    def local_cache_dir(self, key: str) -> Path:
        return self.local_path(key)

    def presigned_url(self, key: str, *, expires_seconds: int, filename: str | None = None) -> str | None:
        return None

    def exists(self, key: str) -> bool:
        return self.local_path(key).exists()

    def size(self, key: str) -> int:
        path = self.local_path(key)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        return path.stat().st_size

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        # Remove the directories left empty (``corpora/<id>/`` after its file), up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def remove_stale_temporaries(self, older_than: float) -> list[str]:
        tmp = self.root / _TMP_DIR
        if not tmp.is_dir():
            return []
        cutoff = time.time() - older_than
        removed = []
        for entry in sorted(tmp.iterdir()):
            try:
                if _last_written(entry) >= cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:
                continue  # committed or aborted meanwhile: its write was alive after all
            removed.append(entry.name)
        return removed

    def temporary_entries(self) -> list[Path]:
        """What is left in the temporary area (tests check that failed uploads leave nothing)."""
        tmp = self.root / _TMP_DIR
        return sorted(tmp.iterdir()) if tmp.is_dir() else []


def _last_written(path: Path) -> float:
    """The newest modification time of ``path`` and, for a directory, of everything in it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for parent, directories, files in os.walk(path):
            for name in (*directories, *files):
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
    return newest
