"""Download archives of a run's Hugging Face directories (the final model, kept checkpoints).

An archive is a ``.tar.gz`` of the directory's files under one top-level folder, built once and cached
in storage with its sha256 beside it (``<name>.tar.gz.sha256``, in ``sha256sum`` format), so that every
later download is a plain file served with Range support. It is deterministic: members sorted by name,
each with the mtime of the directory's manifest, uid/gid 0, no user names, fixed modes, and a gzip
header without a name or time of its own; the same directory gives the same bytes and the same digest.

Optimizer, scheduler, scaler and RNG state and the Trainer's state (what resuming needs, not what
``from_pretrained`` needs, often twice the size of the weights: ``layout.TRAINING_STATE_PATTERNS``) are
left out unless asked for.

The cached name carries a fingerprint of the files it was built from (names, sizes, modification
times), so a directory written again (a resumed run saving the same step anew) gets a new archive.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from app.storage import PendingObject, Storage
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, is_training_state

__all__ = [
    "ArchiveSource",
    "StoredArchive",
    "archive_members",
    "archive_mtime",
    "ensure_archive",
    "write_archive",
]

# Bump when the archive layout changes, so that cached archives of the old layout are not served.
_FORMAT = "1"
# Weights are floats that barely compress: the fastest level loses almost nothing and builds several
# times faster than the default.
_COMPRESS_LEVEL = 1
_COPY_BUFFER = 1 << 20


@dataclass(frozen=True)
class ArchiveSource:
    """What to archive: the directory ``directory_key`` in storage, as the folder ``root`` of the
    archive, cached as ``<cache_prefix>/<root>-<fingerprint>[-with-training-state].tar.gz``."""

    directory_key: str
    root: str
    cache_prefix: str
    include_training_state: bool = False


@dataclass(frozen=True)
class StoredArchive:
    key: str
    path: Path  # local file to serve
    sha256: str
    size: int
    filename: str  # the name offered to the client


def archive_members(directory: Path, *, include_training_state: bool) -> list[tuple[str, Path]]:
    """``(name in the archive, file)`` for the regular files under ``directory`` (links and hidden or
    temporary entries left out), sorted by name."""
    members = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if any(part.startswith((".", "tmp-")) for part in relative.parts):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        if not include_training_state and is_training_state(path.name):
            continue
        members.append((relative.as_posix(), path))
    return sorted(members)


def archive_mtime(directory: Path) -> int:
    """The time the directory was written, from its manifest's ``created_at`` (else the newest file's
    mtime): the mtime of every member, so that the archive does not depend on when it is built."""
    for manifest in (MODEL_MANIFEST, CHECKPOINT_MANIFEST):
        try:
            created_at = json.loads((directory / manifest).read_text(encoding="utf-8"))["created_at"]
            return int(datetime.fromisoformat(created_at).timestamp())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    times = [path.stat().st_mtime for path in directory.rglob("*") if path.is_file()]
    return int(max(times, default=0))


def write_archive(out: PendingObject, root: str, members: list[tuple[str, Path]], mtime: int) -> str:
    """Write the deterministic ``.tar.gz`` of ``members`` under the folder ``root`` to ``out``; returns
    its sha256 (hex)."""
    sink = _HashingSink(out)
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=sink, mtime=mtime, compresslevel=_COMPRESS_LEVEL
        ) as zipped,
        tarfile.TarFile(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_COPY_BUFFER) as tar,
    ):
        tar.addfile(_tar_info(f"{root}/", tarfile.DIRTYPE, 0o755, 0, mtime))
        folders = {""}
        for name, path in members:
            # Parent folders first (HF directories are flat, but a tokenizer may keep a subfolder).
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    tar.addfile(_tar_info(f"{root}/{folder}/", tarfile.DIRTYPE, 0o755, 0, mtime))
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                tar.addfile(_tar_info(f"{root}/{name}", tarfile.REGTYPE, 0o644, size, mtime), source)
    return sink.digest.hexdigest()


def ensure_archive(storage: Storage, source: ArchiveSource) -> StoredArchive:
    """The cached archive of ``source``, built first if needed. FileNotFoundError when the directory is
    not in storage."""
    directory = storage.local_path(source.directory_key)
    if not directory.is_dir():
        raise FileNotFoundError(source.directory_key)
    members = archive_members(directory, include_training_state=source.include_training_state)
    suffix = "-with-training-state" if source.include_training_state else ""
    filename = f"{source.root}{suffix}.tar.gz"
    key = f"{source.cache_prefix}/{source.root}-{_fingerprint(members)}{suffix}.tar.gz"
    digest_key = f"{key}.sha256"
    with _building(key):
        if not (storage.exists(key) and storage.exists(digest_key)):
            with storage.open_write(key) as pending:
                sha256 = write_archive(pending, source.root, members, archive_mtime(directory))
                pending.commit()
            with storage.open_write(digest_key) as pending:
                pending.write(f"{sha256}  {filename}\n".encode())
                pending.commit()
    with storage.open_read(digest_key) as stream:
        sha256 = stream.read().decode().split()[0]
    return StoredArchive(
        key=key, path=storage.local_path(key), sha256=sha256, size=storage.size(key), filename=filename
    )


def _fingerprint(members: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256(_FORMAT.encode())
    for name, path in members:
        stat = path.stat()
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _tar_info(name: str, kind: bytes, mode: int, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingSink:
    """What gzip writes into: the pending storage object, hashed on the way."""

    def __init__(self, out: PendingObject) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.out.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _building(key: str) -> Iterator[None]:
    """One build of an archive at a time in this process; concurrent requests for it wait and then find
    it cached (across processes, both build the same bytes and the second rename wins harmlessly)."""
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield
