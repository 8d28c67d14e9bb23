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
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from app.storage import Storage, StoredFile
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
    of the file ``key`` in storage."""

    offset: int
    size: int
    data: bytes = b""
    key: str | None = None


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
        reading only the files they cover. The files are opened before the first chunk, so that with local
        storage a checkpoint rotated away while it is being sent is still sent whole (an S3 object is
        requested at its first read: a range of it, when only a range is wanted). ArchiveChanged if a
        file changed size or vanished."""
        last = self.size - 1 if last is None else last
        wanted = [part for part in self.parts if part.offset <= last and part.offset + part.size > first]
        with ExitStack() as files:
            opened = {}
            for part in wanted:
                if part.key is not None:
                    start, end = _covered(part, first, last)
                    opened[part.key] = files.enter_context(_open(self.storage, part.key, start, end))
            for part in wanted:
                start, end = _covered(part, first, last)
                if part.key is None:
                    yield part.data[start:end]
                else:
                    yield from _file_chunks(opened[part.key], part.key, end - start)

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


def archive_members(files: Iterable[StoredFile], *, include_training_state: bool) -> list[StoredFile]:
    """The files of a directory (:meth:`Storage.list_files`) that go into its archive, sorted by name:
    hidden and temporary entries left out, and the training state unless asked for."""
    members = []
    for file in files:
        parts = file.name.split("/")
        if any(part.startswith((".", "tmp-")) for part in parts):
            continue
        if not include_training_state and is_training_state(parts[-1]):
            continue
        members.append(file)
    return sorted(members, key=lambda file: file.name)


def archive_mtime(storage: Storage, directory_key: str, files: Iterable[StoredFile]) -> int:
    """The time the directory was written, from its manifest's ``created_at`` (else the newest file's
    time): the mtime of every member, so that the archive does not depend on when it is sent."""
    names = {file.name for file in files}
    for manifest in (MODEL_MANIFEST, CHECKPOINT_MANIFEST):
        if manifest not in names:
            continue
        try:
            with storage.open_read(f"{directory_key}/{manifest}") as stream:
                created_at = json.loads(stream.read().decode("utf-8"))["created_at"]
            return int(datetime.fromisoformat(created_at).timestamp())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max((file.modified_ns // 1_000_000_000 for file in files), default=0)


def plan_archive(storage: Storage, source: ArchiveSource) -> StreamedArchive:
    """The archive of ``source``, laid out from its files' names and sizes (no file is read but the
    manifest). FileNotFoundError when the directory is not in storage."""
    files = storage.list_files(source.directory_key)
    if not files:
        raise FileNotFoundError(source.directory_key)
    members = archive_members(files, include_training_state=source.include_training_state)
    mtime = archive_mtime(storage, source.directory_key, files)
    parts: list[_Part] = []
    offset = 0

    def add(size: int, data: bytes = b"", key: str | None = None) -> None:
        nonlocal offset
        if size:
            parts.append(_Part(offset, size, data, key))
            offset += size

    def add_header(info: tarfile.TarInfo) -> None:
        header = info.tobuf(tarfile.PAX_FORMAT, _ENCODING, "surrogateescape")
        add(len(header), header)

    add_header(_tar_info(f"{source.root}/", tarfile.DIRTYPE, 0o755, 0, mtime))
    folders = {""}
    for member in members:
        name, size = member.name, member.size
        # Parent folders first (HF directories are flat, but a tokenizer may keep a subfolder).
        parents = name.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            folder = "/".join(parents[:depth])
            if folder not in folders:
                folders.add(folder)
                add_header(_tar_info(f"{source.root}/{folder}/", tarfile.DIRTYPE, 0o755, 0, mtime))
        add_header(_tar_info(f"{source.root}/{name}", tarfile.REGTYPE, 0o644, size, mtime))
        add(size, key=f"{source.directory_key}/{name}")
        add(-size % tarfile.BLOCKSIZE, bytes(-size % tarfile.BLOCKSIZE))
    # The end: two zero blocks, then zeros up to a whole record (as tarfile.TarFile.close writes it).
    add(2 * tarfile.BLOCKSIZE, bytes(2 * tarfile.BLOCKSIZE))
    add(-offset % tarfile.RECORDSIZE, bytes(-offset % tarfile.RECORDSIZE))

    suffix = "-with-training-state" if source.include_training_state else ""
    fingerprint = _fingerprint(source, [(file.name, file.size, file.modified_ns) for file in members])
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


def _covered(part: _Part, first: int, last: int) -> tuple[int, int]:
    """The bytes of ``part`` (from its own start, end exclusive) that ``first``-``last`` cover."""
    return max(first, part.offset) - part.offset, min(last + 1, part.offset + part.size) - part.offset


def _open(storage: Storage, key: str, start: int, end: int) -> BinaryIO:
    try:
        return storage.open_read(key, start=start, end=end)
    except FileNotFoundError:
        raise ArchiveChanged(f"{key.rsplit('/', 1)[-1]} vanished while the archive was being sent") from None


def _file_chunks(stream: BinaryIO, key: str, length: int) -> Iterator[bytes]:
    name = key.rsplit("/", 1)[-1]
    left = length
    while left > 0:
        try:
            chunk = stream.read(min(left, _CHUNK))
        except FileNotFoundError:  # an object requested at its first read
            raise ArchiveChanged(f"{name} vanished while the archive was being sent") from None
        if not chunk:
            raise ArchiveChanged(f"{name} shrank while the archive was being sent")
        left -= len(chunk)
        yield chunk
