"""Downloads of a run's archives (its final model, a kept checkpoint) that resume where they stopped, are
checked against the server's sha256, and are unpacked safely.

How the API serves them (:mod:`app.api.downloads`, :mod:`app.runs.download_archive`): a plain ``.tar``
with ``Content-Length``, an ``ETag`` that names its content (the same on every answer while the files stay
the same), byte ranges (``Range`` with ``If-Range``: 206 with the range, or 200 with the whole archive
when it changed), and ``X-Content-SHA256``, the archive's digest, once one complete download has computed
it (not before: the first download of an archive carries none).

Here: a ``HEAD`` learns the name, size, ETag and (when known) digest; the bytes go to ``<name>.part`` in
``out_dir``, beside ``<name>.part.json`` (the ETag and size the part belongs to). A connection lost
mid-file is resumed from the part's length with ``Range`` and ``If-Range`` (within the call, as often as
the client's :class:`~bertpt.client.client.Retries` allow, as for the ``HEAD`` requests; and by the next
call for the same archive, after a crash). The finished file's sha256 is compared with the server's
digest (asked again once the file is complete, if none came before): a part that was resumed and does
not match (a part damaged on disk, or garbage left under its name) is discarded and downloaded again from
the start, once; a mismatch after that raises ApiError ``checksum_mismatch``. Without a digest from the
server the file is returned with ``verified`` False. The part becomes ``<name>`` by an atomic rename.

Extraction refuses the whole archive (ApiError ``unsafe_archive``) before writing anything when a member
is a link, a device or anything else than a regular file or folder, has an absolute name, or a ``..``
among its parts. It unpacks into a temporary folder inside ``out_dir`` (with tarfile's ``data`` filter on
top), marks the folder as this client's (:data:`EXTRACTED_MARKER`), then renames it into place. The
folder's name is the archive's (the server's choice): what is in its way is replaced only when it is a
folder this client extracted (it holds the marker), else ApiError ``destination_exists`` names it and
nothing is written (``--out .`` in a checkout never loses a ``src`` or a ``.git``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from bertpt.client.errors import ApiError, is_transient
from bertpt.client.uploads import Progress

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = ["EXTRACTED_MARKER", "Download", "download_archive", "extract_archive", "file_sha256"]

logger = logging.getLogger(__name__)

DIGEST_HEADER = "x-content-sha256"
# Written into every folder this client extracts (JSON: the archive it came from): only a folder holding
# it is replaced by a later extraction of the same name.
EXTRACTED_MARKER = ".bertpt-extracted.json"
PART_SUFFIX = ".part"
STATE_SUFFIX = ".part.json"
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_FILENAME_STAR = re.compile(r"filename\*=utf-8''([^;]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename="([^"]+)"', re.IGNORECASE)


@dataclass(frozen=True)
class Download:
    """A downloaded archive: its path, its sha256 (hex), the folder it was extracted to (None when not
    extracted), and whether the sha256 matched the server's digest (False: the server had none yet)."""

    archive: Path
    sha256: str
    directory: Path | None
    verified: bool = False


@dataclass(frozen=True)
class _Remote:
    """What the server says of the archive."""

    filename: str
    size: int
    etag: str
    sha256: str | None


def download_archive(
    client: Client,
    path: str,
    out_dir: Path,
    *,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
    extract: bool = True,
) -> Download:
    """Download the archive at ``path`` into ``out_dir`` (created if needed), resuming a part left there;
    ``progress(bytes on disk, size)`` as it goes. See the module docstring for the checks and errors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remote = _probe(client, path, params)
    archive = out_dir / remote.filename
    part = archive.with_name(archive.name + PART_SUFFIX)
    state = archive.with_name(archive.name + STATE_SUFFIX)
    restarted = False
    while True:
        resumed, remote = _fetch(client, path, params, remote, part, state, progress)
        digest = remote.sha256 or _probe(client, path, params).sha256
        sha256 = file_sha256(part)
        if digest is None or sha256 == digest:
            break
        if resumed and not restarted:
            logger.warning(
                "%s: sha256 %s, the server's is %s: the partial download was damaged; downloading it again",
                archive.name,
                sha256,
                digest,
            )
            part.unlink()
            restarted = True
            continue
        _discard(part, state)
        raise ApiError(
            0,
            "checksum_mismatch",
            f"{archive.name}: the sha256 of the downloaded file is {sha256}, the server's is {digest}; "
            "it was deleted: download it again",
        )
    os.replace(part, archive)
    state.unlink(missing_ok=True)
    directory = extract_archive(archive, out_dir) if extract else None
    return Download(archive=archive, sha256=sha256, directory=directory, verified=digest is not None)


def _probe(client: Client, path: str, params: dict[str, Any] | None) -> _Remote:
    """The archive as a HEAD request describes it, the request sent again after a transient error (no
    answer, 502, 503, 504) as the client's Retries allow."""
    return client.retries.call(lambda: _head(client, path, params), f"HEAD {path}")


def _head(client: Client, path: str, params: dict[str, Any] | None) -> _Remote:
    """One HEAD request. A HEAD answer has no body: on an error the GET is sent to get the API's error
    body (it fails the same way)."""
    try:
        response = client.request("HEAD", path, params=params)
    except ApiError as exc:
        if exc.status_code < 400:
            raise
        with client.request_stream("GET", path, params=params):
            pass  # an answer after all: the state changed in between; report the HEAD's error
        raise
    return _remote(response)


def _remote(response: httpx.Response) -> _Remote:
    headers = response.headers
    content_range = _CONTENT_RANGE.match(headers.get("content-range", ""))
    size = int(content_range.group(3)) if content_range else int(headers.get("content-length", "-1"))
    etag = headers.get("etag")
    if size < 0 or not etag:
        raise ApiError(0, "invalid_response", f"{response.request.url} is not a download of the bertpt API")
    return _Remote(
        filename=_filename(headers.get("content-disposition", ""), response.request.url),
        size=size,
        etag=etag,
        sha256=headers.get(DIGEST_HEADER),
    )


def _filename(disposition: str, url: httpx.URL) -> str:
    """The file name the server offers (its last component only, so that it stays in ``out_dir``)."""
    match = _FILENAME_STAR.search(disposition)
    name = unquote(match.group(1)) if match else None
    if name is None and (match := _FILENAME.search(disposition)):
        name = match.group(1)
    name = PurePosixPath((name or url.path.rstrip("/").rsplit("/", 1)[-1]).replace("\\", "/")).name
    if name in ("", ".", ".."):
        name = "download.tar"
    return name


def _fetch(
    client: Client,
    path: str,
    params: dict[str, Any] | None,
    remote: _Remote,
    part: Path,
    state: Path,
    progress: Progress | None,
) -> tuple[bool, _Remote]:
    """Make ``part`` the whole archive: continue a part of the same ETag, else start anew; a connection
    lost on the way is resumed. Returns whether any byte of the part came from before a resumption, and
    the archive as the last answer described it."""
    offset = _resumable_length(part, state, remote)
    resumed = offset > 0
    if offset == 0:
        part.write_bytes(b"")
        _write_state(state, remote)
    failures = 0
    while offset < remote.size:
        headers = {"Range": f"bytes={offset}-", "If-Range": remote.etag} if offset else {}
        try:
            with client.request_stream("GET", path, params=params, headers=headers) as response:
                answered = _remote(response)
                if response.status_code == 206 and _range_start(response) == offset:
                    remote = _Remote(
                        remote.filename, answered.size, answered.etag, answered.sha256 or remote.sha256
                    )
                else:  # the whole archive (it changed: If-Range did not hold), or a range we did not ask for
                    if response.status_code == 206:
                        raise ApiError(0, "invalid_response", f"{path}: answered another range than asked")
                    if offset:
                        logger.warning("%s changed on the server: downloading it again", remote.filename)
                    offset, resumed, remote = 0, False, answered
                    _write_state(state, remote)
                with part.open("r+b") as stream:
                    stream.seek(offset)
                    stream.truncate()
                    for chunk in response.iter_bytes():  # as they arrive: a lost connection loses none
                        stream.write(chunk)
                        offset += len(chunk)
                        failures = 0
                        if progress is not None:
                            progress(offset, remote.size)
            if offset < remote.size:  # the body ended early without an error: as if the connection was lost
                raise ApiError(
                    0, "connection_lost", f"{path}: the body ended at byte {offset} of {remote.size}"
                )
        except ApiError as exc:
            if exc.status_code == 416:  # the part is longer than the archive: start anew
                offset, resumed = 0, False
                continue
            if not is_transient(exc):
                raise
            failures += 1
            if failures > client.retries.attempts:
                raise
            logger.warning(
                "the download of %s stopped at byte %d of %d (%s); resuming (%d/%d)",
                remote.filename,
                offset,
                remote.size,
                exc,
                failures,
                client.retries.attempts,
            )
            resumed = resumed or offset > 0
            client.retries.wait(failures)
    return resumed, remote


def _resumable_length(part: Path, state: Path, remote: _Remote) -> int:
    """The length of a part left by an earlier try that can be continued: one whose state names the
    archive's current ETag and size and that is not longer; 0 otherwise."""
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))
        length = part.stat().st_size
    except (OSError, ValueError):
        return 0
    if not isinstance(saved, dict) or saved.get("etag") != remote.etag or saved.get("size") != remote.size:
        return 0
    return length if length <= remote.size else 0


def _write_state(state: Path, remote: _Remote) -> None:
    state.write_text(json.dumps({"etag": remote.etag, "size": remote.size}), encoding="utf-8")


def _range_start(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- extraction -------------------------------------------------------------------------------------------


def extract_archive(archive: Path, out_dir: Path) -> Path:
    """Unpack the tar ``archive`` into ``out_dir`` and return the folder it made: the archive's one top
    folder (as bertpt's archives have), else a folder named after the archive, marked with
    :data:`EXTRACTED_MARKER`. Nothing is written on an error: ApiError ``unsafe_archive`` naming the first
    member refused; ``destination_exists`` when something else than an earlier extraction of this client
    has the folder's name; ``invalid_archive`` when it is not a tar file."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            root = _checked_root(members, archive)
            name = root if root is not None else _stem(archive)
            target = out_dir / name
            _check_replaceable(target, archive)
            with tempfile.TemporaryDirectory(prefix=".tmp-extract-", dir=out_dir) as temporary:
                into = Path(temporary) if root is not None else Path(temporary) / name
                tar.extractall(into, members=members, filter="data")
                marker = json.dumps({"archive": archive.name})
                (Path(temporary) / name / EXTRACTED_MARKER).write_text(marker, encoding="utf-8")
                _check_replaceable(target, archive)  # again: what the user may have put there meanwhile
                if target.exists():
                    shutil.rmtree(target)
                os.replace(Path(temporary) / name, target)
    except tarfile.TarError as exc:
        raise ApiError(0, "invalid_archive", f"{archive.name} is not a readable tar file: {exc}") from None
    return target


def _check_replaceable(target: Path, archive: Path) -> None:
    """Nothing at ``target``, or a folder (not a link) this client extracted; else ApiError
    ``destination_exists`` naming it."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink():
        marker = target / EXTRACTED_MARKER
        if marker.is_file() and not marker.is_symlink():
            return
    raise ApiError(
        0,
        "destination_exists",
        f"{archive.name} extracts to {target}, which exists and was not extracted by bertpt (no "
        f"{EXTRACTED_MARKER} in it): nothing was replaced; move it away or extract elsewhere (--out)",
    )


def _checked_root(members: list[tarfile.TarInfo], archive: Path) -> str | None:
    """The one top folder of every member, or None when they do not share one; ApiError for an unsafe
    member."""
    tops: set[str] = set()
    for member in members:
        name = member.name
        parts = [part for part in PurePosixPath(name).parts if part != "."]
        if not parts and member.isdir() and name.strip("/") == ".":
            continue  # "./", as `tar -C folder .` writes it: the extraction folder itself
        reason = None
        if not (member.isfile() or member.isdir()):
            reason = "a link" if member.issym() or member.islnk() else "not a regular file or folder"
        elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
            reason = "an absolute or Windows path"
        elif ".." in parts or not parts or "\0" in name:
            reason = "outside the archive's folder"
        if reason is not None:
            raise ApiError(
                0, "unsafe_archive", f"{archive.name}: member {name!r} is {reason}; nothing extracted"
            )
        tops.add(parts[0])
        if len(parts) == 1 and not member.isdir():
            tops.add("")  # a file at the top level: no common folder
    if len(tops) == 1 and "" not in tops:
        return tops.pop()
    return None


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return f"{name}.d"
