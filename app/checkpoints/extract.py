"""Safe extraction of an uploaded checkpoint archive (.tar.gz, .tar or .zip of a save_pretrained
directory, or an archive bertpt itself served: a run's model or checkpoint download).

Only regular files with the names a Hugging Face BERT checkpoint uses (and bertpt's manifests) are
extracted, flat, into the target directory: at the archive's top level or inside one top-level folder.
The training state of a bertpt checkpoint (optimizer, scheduler, RNG state: what a download with
``include_optimizer`` adds) is skipped and named in the result (``model_files.is_left_out_of_uploads``).
Links, devices, absolute paths, ``..``, encrypted members, pickle weights, duplicates and unexpected names
are refused before anything of theirs is written. The member count is capped, and so is what the archive
decompresses to (:class:`~worker.pretraining.inflate.InflateLimits`: its size, and its ratio to the
compressed bytes read), checked as it inflates: a tar.gz's whole stream (headers and skipped members
included), a zip's members as they are written (archive headers can lie). Nothing is extracted with
``tarfile``/``zipfile``'s own extract functions.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from worker.pretraining.inflate import GzipError, InflateLimitExceeded, InflateLimits, InflatingReader
from worker.pretraining.model_files import (
    ARCHIVE_FILES,
    CONVERT_HINT,
    PICKLE_SUFFIXES,
    is_left_out_of_uploads,
    is_model_file,
)

__all__ = [
    "ArchiveError",
    "ArchiveTooLarge",
    "ExtractedFiles",
    "archive_kind",
    "extract_checkpoint_archive",
]

ArchiveKind = Literal["tar.gz", "tar", "zip"]

# Left behind by macOS archivers and git checkouts: skipped silently.
_JUNK_DIRS = ("__MACOSX",)
_JUNK_FILES = (".DS_Store", ".gitattributes")
_COPY_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is corrupt or holds something that is not accepted; the message says what."""


class ArchiveTooLarge(ArchiveError):
    """The archive decompresses beyond a cap; ``exceeded`` says which."""

    def __init__(self, exceeded: InflateLimitExceeded) -> None:
        super().__init__(f"the archive is refused: {exceeded}")
        self.exceeded = exceeded
        self.limit = exceeded.limit


@dataclass
class ExtractedFiles:
    names: list[str] = field(default_factory=list)
    bytes: int = 0
    left_out: list[str] = field(default_factory=list)  # a bertpt checkpoint's training state, skipped


def archive_kind(filename: str) -> ArchiveKind | None:
    lower = filename.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return None


def extract_checkpoint_archive(
    archive: Path,
    kind: ArchiveKind,
    target: Path,
    *,
    max_members: int,
    max_bytes: int,
    max_ratio: float | None = None,
) -> ExtractedFiles:
    """Extract the checkpoint files of ``archive`` into the existing directory ``target``; at most
    ``max_bytes`` decompressed, at most ``max_ratio`` times the compressed bytes (ArchiveTooLarge)."""
    limits = InflateLimits(max_bytes=max_bytes, max_ratio=max_ratio)
    extractor = _Extractor(target, max_members=max_members, limits=limits)
    try:
        if kind == "zip":
            _extract_zip(archive, extractor)
        else:
            _extract_tar(archive, extractor, gzipped=kind == "tar.gz")
    except InflateLimitExceeded as exc:
        raise ArchiveTooLarge(exc) from None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, GzipError) as exc:
        raise ArchiveError(f"the archive is corrupt or truncated ({exc}); create it again") from None
    except OSError as exc:  # gzip raises BadGzipFile (an OSError) on a non-gzip stream
        raise ArchiveError(f"the archive cannot be read ({exc})") from None
    if not extractor.result.names:
        raise ArchiveError("the archive holds no files")
    return extractor.result


def _extract_tar(archive: Path, extractor: _Extractor, *, gzipped: bool) -> None:
    with open(archive, "rb") as raw:
        if gzipped and raw.read(2) != b"\x1f\x8b":
            raise ArchiveError("not a gzip-compressed tar archive (.tar.gz); create it with `tar czf`")
    # Streaming mode: one pass over the (compressed) data, members handled in order. The gzip layer is
    # ours, so that everything it inflates counts, skipped members and padding too.
    with open(archive, "rb") as raw:
        stream = io.BufferedReader(InflatingReader(raw, extractor.limits)) if gzipped else raw
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            _extract_tar_members(tar, extractor)


def _extract_tar_members(tar: tarfile.TarFile, extractor: _Extractor) -> None:
    for member in tar:
        extractor.count_member(member.name)
        kind = "dir" if member.isdir() else "file" if member.isreg() else _tar_type(member)
        path = extractor.accept(member.name, kind)
        if path is None:
            continue
        extractor.check_declared_size(member.size)
        source = tar.extractfile(member)
        if source is None:  # not reachable for regular files
            raise ArchiveError(f"archive member {member.name!r} cannot be read")
        with source:
            extractor.write(path, source)


def _tar_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return "special file"


def _extract_zip(archive: Path, extractor: _Extractor) -> None:
    with open(archive, "rb") as raw:
        if raw.read(2) != b"PK":
            raise ArchiveError("not a zip archive")
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            extractor.count_member(info.filename)
        for info in members:
            mode = info.external_attr >> 16
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted")
            if info.is_dir():
                kind = "dir"
            elif stat.S_ISLNK(mode):
                kind = "symbolic link"
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                kind = "special file"
            else:
                kind = "file"
            path = extractor.accept(info.filename, kind)
            if path is None:
                continue
            extractor.check_declared_size(info.file_size)
            with zf.open(info) as source:
                extractor.write(path, source, compressed=info.compress_size)


class _Extractor:
    def __init__(self, target: Path, *, max_members: int, limits: InflateLimits) -> None:
        self.target = target
        self.max_members = max_members
        self.limits = limits
        self.result = ExtractedFiles()
        self._members = 0
        self._root: str | None = None  # "" for files at the top level, else the one top-level folder

    def count_member(self, name: str) -> None:
        self._members += 1
        if self._members > self.max_members:
            raise ArchiveError(
                f"the archive has more than {self.max_members} members; a checkpoint directory holds a "
                "handful of files (config, weights, tokenizer)"
            )

    def accept(self, raw_name: str, kind: str) -> Path | None:
        """The target path of a member to extract, None for one to skip; ArchiveError if refused."""
        parts = _member_parts(raw_name)
        if not parts or parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES:
            return None
        if kind == "dir":
            if len(parts) > 1:
                raise ArchiveError(f"unexpected folder {raw_name!r}: put the checkpoint files in one folder")
            self._set_root(parts[0], raw_name)
            return None
        if kind != "file":
            raise ArchiveError(f"archive member {raw_name!r} is a {kind}; only regular files are accepted")
        if len(parts) > 2:
            raise ArchiveError(
                f"unexpected nested file {raw_name!r}: the files must be at the top level of the archive or "
                "inside one folder"
            )
        self._set_root(parts[0] if len(parts) == 2 else "", raw_name)
        name = parts[-1]
        if is_left_out_of_uploads(name):
            if name not in self.result.left_out:
                self.result.left_out.append(name)
            return None
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise ArchiveError(
                f"{name!r} is a pickle file. {CONVERT_HINT} Leave pickle files out of the archive."
            )
        if not is_model_file(name):
            raise ArchiveError(
                f"unexpected file {name!r} in the archive; a checkpoint may hold only: "
                f"{', '.join(sorted(ARCHIVE_FILES))} and model-NNNNN-of-NNNNN.safetensors shards"
            )
        if name in self.result.names:
            raise ArchiveError(f"{name!r} appears twice in the archive")
        return self.target / name

    def _set_root(self, root: str, raw_name: str) -> None:
        if self._root is None:
            self._root = root
        elif self._root != root:
            raise ArchiveError(
                f"{raw_name!r}: the files must be at the top level of the archive or all inside one folder"
            )

    def check_declared_size(self, size: int) -> None:
        total = self.result.bytes + size
        self.limits.check(total, total)  # the size only: a ratio of 1

    def write(self, path: Path, source: IO[bytes], *, compressed: int | None = None) -> None:
        """Copy ``source`` to ``path``, checking the limits at each chunk: the total size, and with
        ``compressed`` (a zip member's compressed size) the member's own ratio."""
        self.result.names.append(path.name)
        written = 0
        with open(path, "xb") as out:
            for chunk in _read_chunks(source):
                written += len(chunk)
                self.result.bytes += len(chunk)
                self.limits.check(self.result.bytes, self.result.bytes)
                if compressed is not None:
                    self.limits.check(written, compressed)
                out.write(chunk)


def _member_parts(raw_name: str) -> list[str]:
    """Path components of a member name, refusing anything that could leave the target directory."""
    if (
        "\\" in raw_name
        or "\x00" in raw_name
        or raw_name.startswith("/")
        or re.match(r"^[A-Za-z]:", raw_name)
    ):
        raise ArchiveError(f"archive member {raw_name!r} has an absolute or non-portable path")
    parts = [part for part in PurePosixPath(raw_name).parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {raw_name!r} points outside the archive ('..')")
    return parts


def _read_chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(_COPY_CHUNK):
        yield chunk
