"""Download archives of a run's Hugging Face directories (the final model, kept checkpoints), streamed.

An archive is a plain ``.tar`` (POSIX pax format) of the directory's files under one top-level folder,
written while it is sent: nothing is built ahead or stored, so the first bytes leave as soon as the
directory is listed, whatever its size. (A ``.tar.gz`` built on first request and cached kept the first
request for a 275 MB checkpoint with its optimizer state waiting 14-21 s before its first byte.)

Uncompressed on purpose: the layout of an uncompressed tar follows from its members' names and sizes
alone, so its length (Content-Length) and where each of its bytes comes from are known before any file is
read, and a byte range (a resumed download) is served by reading only what it covers (:meth:`StreamedArchive.
read`). A gzip stream has neither property. And it would save little: weights and optimizer state are
floats that gzip shrinks by about 8% (all-MiniLM-L6-v2's weights at level 1), at some 15 MB/s of CPU.

Deterministic: members sorted by name, each with the mtime of the directory's manifest, uid/gid 0, no user
names, fixed modes: the same directory gives the same bytes, those ``tarfile`` writes for these members.

Identity and digest. A run's directories are written once (atomically) and never changed in place, so an
archive is identified by a fingerprint of its members' names, sizes and modification times: its ETag,
known before any byte is read and the same on every response, so a download interrupted on the first
try resumes with ``If-Range``. A directory written anew (a resumed run saving a step again) has new
times, hence a new ETag. The sha256 of the whole archive needs every byte: it is computed while the first
complete download is sent, kept in storage beside the run's output (``archives/<name>-<fingerprint>.
tar.sha256``, in ``sha256sum`` format), and sent as ``X-Content-SHA256`` from then on.

Optimizer, scheduler, scaler and RNG state and the Trainer's state (what resuming needs, not what
``from_pretrained`` needs, often twice the size of the weights: ``layout.TRAINING_STATE_PATTERNS``) are
left out unless asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from app.storage import Storage
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, is_training_state

__all__ = [
    "MEDIA_TYPE",
    "ArchiveChanged",
    "ArchiveSource",
    "StreamedArchive",
    "archive_members",
    "archive_mtime",
    "plan_archive",
]

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/x-tar"
# Bump when the archive layout changes: a new fingerprint, so that no stored digest of the old one is used.
_FORMAT = "2"
_CHUNK = 1 << 20  # bytes read from a file at a time
_ENCODING = "utf-8"


class ArchiveChanged(OSError):
    """A file of the archive changed size or vanished after its layout was planned: the stream stops
    short of its Content-Length, and the client sees an incomplete download to retry."""


@dataclass(frozen=True)
class ArchiveSource:
    """What to archive: the directory ``directory_key`` in storage, as the folder ``root`` of the
    archive; its digest is kept under ``cache_prefix``."""

    directory_key: str
    root: str
    cache_prefix: str
    include_training_state: bool = False


@dataclass(frozen=True)
class _Part:
    """A stretch of the archive at ``offset``: fixed bytes (headers, padding), or the first ``size`` bytes
    of the file ``path``."""

    offset: int
    size: int
    data: bytes = b""
    path: Path | None = None


@dataclass(frozen=True)
class StreamedArchive:
    """The planned archive of a directory: its size and identity, and its bytes on demand."""

    filename: str  # the name offered to the client
    size: int
    etag: str  # the fingerprint, unquoted
    sha256: str | None  # of the whole archive, once a complete download has computed it
    parts: tuple[_Part, ...]
    storage: Storage
    digest_key: str

    def read(self, first: int = 0, last: int | None = None) -> Iterator[bytes]:
        """The bytes ``first`` to ``last`` (inclusive; default: to the end), in chunks of at most 1 MiB,
        reading only the files they cover. The files are opened before the first chunk, so a checkpoint
        rotated away while it is being sent is still sent whole. ArchiveChanged if a file changed size."""
        last = self.size - 1 if last is None else last
        wanted = [part for part in self.parts if part.offset <= last and part.offset + part.size > first]
        with ExitStack() as files:
            opened = {part.path: files.enter_context(_open(part)) for part in wanted if part.path is not None}
            for part in wanted:
                start = max(first, part.offset) - part.offset
                end = min(last + 1, part.offset + part.size) - part.offset
                if part.path is None:
                    yield part.data[start:end]
                else:
                    yield from _file_chunks(opened[part.path], part.path, start, end)

    def whole(self) -> Iterator[bytes]:
        """Every byte, in order. The first time (no digest known), hashes them on the way and keeps the
        sha256 once the last byte is out: from then on it is sent with every response."""
        if self.sha256 is not None:
            yield from self.read()
            return
        digest = hashlib.sha256()
        for chunk in self.read():
            digest.update(chunk)
            yield chunk
        try:
            with self.storage.open_write(self.digest_key) as pending:
                pending.write(f"{digest.hexdigest()}  {self.filename}\n".encode())
                pending.commit()
        except OSError as exc:  # the download itself is complete: the next one will try again
            logger.warning("could not keep the digest of %s: %s", self.digest_key, exc)


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
    mtime): the mtime of every member, so that the archive does not depend on when it is sent."""
    for manifest in (MODEL_MANIFEST, CHECKPOINT_MANIFEST):
        try:
            created_at = json.loads((directory / manifest).read_text(encoding="utf-8"))["created_at"]
            return int(datetime.fromisoformat(created_at).timestamp())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    times = [path.stat().st_mtime for path in directory.rglob("*") if path.is_file()]
    return int(max(times, default=0))


def plan_archive(storage: Storage, source: ArchiveSource) -> StreamedArchive:
    """The archive of ``source``, laid out from its files' names and sizes (no file is read but the
    manifest). FileNotFoundError when the directory is not in storage."""
    directory = storage.local_path(source.directory_key)
    if not directory.is_dir():
        raise FileNotFoundError(source.directory_key)
    members = [
        (name, path, path.stat())
        for name, path in archive_members(directory, include_training_state=source.include_training_state)
    ]
    mtime = archive_mtime(directory)
    parts: list[_Part] = []
    offset = 0

    def add(size: int, data: bytes = b"", path: Path | None = None) -> None:
        nonlocal offset
        if size:
            parts.append(_Part(offset, size, data, path))
            offset += size

    def add_header(info: tarfile.TarInfo) -> None:
        header = info.tobuf(tarfile.PAX_FORMAT, _ENCODING, "surrogateescape")
        add(len(header), header)

    add_header(_tar_info(f"{source.root}/", tarfile.DIRTYPE, 0o755, 0, mtime))
    folders = {""}
    for name, path, stat in members:
        # Parent folders first (HF directories are flat, but a tokenizer may keep a subfolder).
        parents = name.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            folder = "/".join(parents[:depth])
            if folder not in folders:
                folders.add(folder)
                add_header(_tar_info(f"{source.root}/{folder}/", tarfile.DIRTYPE, 0o755, 0, mtime))
        add_header(_tar_info(f"{source.root}/{name}", tarfile.REGTYPE, 0o644, stat.st_size, mtime))
        add(stat.st_size, path=path)
        add(-stat.st_size % tarfile.BLOCKSIZE, bytes(-stat.st_size % tarfile.BLOCKSIZE))
    # The end: two zero blocks, then zeros up to a whole record (as tarfile.TarFile.close writes it).
    add(2 * tarfile.BLOCKSIZE, bytes(2 * tarfile.BLOCKSIZE))
    add(-offset % tarfile.RECORDSIZE, bytes(-offset % tarfile.RECORDSIZE))

    suffix = "-with-training-state" if source.include_training_state else ""
    fingerprint = _fingerprint(source, [(name, stat.st_size, stat.st_mtime_ns) for name, _, stat in members])
    digest_key = f"{source.cache_prefix}/{source.root}-{fingerprint[:16]}{suffix}.tar.sha256"
    return StreamedArchive(
        filename=f"{source.root}{suffix}.tar",
        size=offset,
        etag=fingerprint,
        sha256=_stored_digest(storage, digest_key),
        parts=tuple(parts),
        storage=storage,
        digest_key=digest_key,
    )


def _fingerprint(source: ArchiveSource, members: list[tuple[str, int, int]]) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\0{source.root}\0{source.include_training_state}".encode())
    for name, size, mtime_ns in members:
        digest.update(f"\0{name}\0{size}\0{mtime_ns}".encode())
    return digest.hexdigest()


def _stored_digest(storage: Storage, key: str) -> str | None:
    if not storage.exists(key):
        return None
    try:
        with storage.open_read(key) as stream:
            return stream.read().decode().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return None


def _tar_info(name: str, kind: bytes, mode: int, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _open(part: _Part) -> BinaryIO:
    assert part.path is not None
    try:
        return open(part.path, "rb")
    except FileNotFoundError:
        raise ArchiveChanged(f"{part.path.name} vanished while the archive was being sent") from None


def _file_chunks(stream: BinaryIO, path: Path, start: int, end: int) -> Iterator[bytes]:
    stream.seek(start)
    left = end - start
    while left > 0:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            raise ArchiveChanged(f"{path.name} shrank while the archive was being sent")
        left -= len(chunk)
        yield chunk
