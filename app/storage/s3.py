"""Storage in an S3-compatible bucket (``STORAGE_URL=s3://<bucket>/<prefix>``), through boto3.

Where the bucket is and who we are come from boto3's own configuration, as with the ``aws`` command:
``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2, ... or unset for AWS), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(or a profile, or an instance role), ``AWS_DEFAULT_REGION``.

In the bucket, the file ``key`` is the object ``<prefix>/<key>``; a directory is the objects under
``<prefix>/<key>/``. Writes are all-or-nothing as the interface asks:

- :meth:`S3Storage.open_write` streams: whole parts of ``STORAGE_PART_BYTES`` go up as the parts of a
  multipart upload (one part in memory at a time), and completing the upload is the commit: the object
  does not exist before it. A file smaller than one part is one PUT at the commit. An abort aborts.
- :meth:`S3Storage.open_tree` fills a local directory; the commit uploads it under
  ``<prefix>/.tmp/<token>/``, copies each object to its key (server-side), and removes the temporaries.
- A :class:`Workspace` (a run's directory while it trains) uploads its files straight to their keys, each
  directory's manifest last (``push(last=...)``): the training library counts a checkpoint or a model as
  complete only once its manifest is there.

The sweep (:meth:`S3Storage.remove_stale_temporaries`) aborts multipart uploads and removes ``.tmp/``
objects that nothing has written to for ``STALE_UPLOAD_SECONDS``, and the cache's own temporaries.

The local cache (``STORAGE_CACHE_DIR``, one per host or container; nothing in it is needed twice):

    objects/<key>/@<fingerprint>/<name>   fetched inputs (corpora, datasets, base models), keyed by the key
                                          and the fingerprint of its files' names, sizes and ETags
    work/<key>/                           workspaces: a run's directory while a worker trains it
    work/<key>.sync.json                  what the workspace last pulled or pushed (sizes, times, ETags)
    <key>/                                local_cache_dir(key): the prepared data
    .tmp/                                 fetches, trees and scratch directories in progress

boto3 rather than s3fs: its client is the reference implementation of the protocol, is thread-safe, and
offers each thing this module needs by name (multipart uploads whose completion is the commit, ranged and
conditional GETs, managed server-side copies of any size, presigned URLs), with no filesystem layer between
the interface and the requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.storage.interface import DiscardedUnlessCommitted, StorageError, StoredFile, validate_key
from app.storage.local import LocalStorage
from app.storage.urls import parse_s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["MIN_PART_BYTES", "S3Storage"]

logger = logging.getLogger(__name__)

MIN_PART_BYTES = 5 << 20  # S3's smallest part, but for the last one
_TMP = ".tmp"
_CHUNK = 1 << 20  # bytes copied at a time on the way down
_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """boto's errors as the interface's: a missing object FileNotFoundError, the rest StorageError."""
    try:
        yield
    except ClientError as exc:
        _raise(exc, what)
    except BotoCoreError as exc:  # unreachable endpoint, no credentials, ...
        raise StorageError(f"S3 storage failed on {what}: {exc}") from exc


def _raise(exc: ClientError, what: str) -> NoReturn:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code in _MISSING:
        raise FileNotFoundError(f"{what} is missing from storage") from None
    raise StorageError(f"S3 storage failed on {what}: {code} {error.get('Message', '')}".rstrip()) from exc


def _etag(value: str) -> str:
    return value.strip('"')


def _time_ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _fingerprint(files: Iterable[StoredFile]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.size}\0{file.etag}\0".encode())
    return digest.hexdigest()[:20]


def _local_files(directory: Path) -> dict[str, Path]:
    """The regular files under ``directory`` by relative POSIX name; hidden names (never storage keys)
    and links left out."""
    if not directory.is_dir():
        return {}
    found = {}
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or path.is_symlink() or not path.is_file():
            continue
        found[relative.as_posix()] = path
    return found


def _prune_empty_directories(root: Path) -> None:
    for parent, directories, files in os.walk(root, topdown=False):
        if parent != str(root) and not directories and not files:
            with contextlib.suppress(OSError):
                os.rmdir(parent)


class _ObjectReader(io.RawIOBase):
    """An object's bytes, from ``start``: the GET is sent at the first read (a reader may be opened well
    before it is read, and an idle response would be cut by the server)."""

    def __init__(self, storage: S3Storage, key: str, start: int, end: int | None) -> None:
        self._storage, self._key, self._start, self._end = storage, key, start, end
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._body is None:
            self._body = self._storage.get_body(self._key, self._start, self._end)
        with _errors(f"reading {self._key!r}"):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


class _S3PendingObject(DiscardedUnlessCommitted):
    """A multipart upload: created when the first whole part is written, completed by :meth:`commit`."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        validate_key(key)
        self.key = key
        self.bytes_written = 0
        self._storage = storage
        self._object = storage.object_name(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError(f"write to {self.key!r} after commit or abort")
        self._buffer += data
        self.bytes_written += len(data)
        part = self._storage.part_bytes
        while len(self._buffer) >= part:
            self._upload_part(bytes(self._buffer[:part]))
            del self._buffer[:part]

    def _upload_part(self, data: bytes) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        with _errors(f"uploading {self.key!r}"):
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._object)["UploadId"]
            number = len(self._parts) + 1
            answer = client.upload_part(
                Bucket=bucket, Key=self._object, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def commit(self) -> None:
        if self._done:
            raise RuntimeError(f"{self.key!r} was already committed or aborted")
        client, bucket = self._storage.client, self._storage.bucket
        if self._upload_id is None:  # smaller than one part: one PUT
            with _errors(f"uploading {self.key!r}"):
                client.put_object(Bucket=bucket, Key=self._object, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            with _errors(f"completing the upload of {self.key!r}"):
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._object,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": cast(Any, self._parts)},
                )
        self._buffer.clear()
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                with _errors(f"aborting the upload of {self.key!r}"):
                    self._storage.client.abort_multipart_upload(
                        Bucket=self._storage.bucket, Key=self._object, UploadId=self._upload_id
                    )
            except (OSError, StorageError) as exc:  # the sweep aborts it later
                logger.warning("%s", exc)


class _S3PendingTree(DiscardedUnlessCommitted):
    """A directory built locally (in the cache's temporary area), uploaded and published on commit."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        validate_key(key)
        self.key = key
        self._storage = storage
        self.path = storage.cache.new_temp_path(suffix=".dir")
        self.path.mkdir()
        self._done = False

    def commit(self) -> None:
        if self._done:
            raise RuntimeError(f"{self.key!r} was already committed or aborted")
        storage = self._storage
        if storage.exists(self.key):
            raise FileExistsError(f"storage key {self.key!r} already exists")
        files = sorted(_local_files(self.path).items())
        staging = storage.temporary_name(secrets.token_hex(12))
        published: list[str] = []
        try:
            for name, path in files:
                storage.upload_file(path, f"{staging}/{name}")
            for name, _ in files:
                target = storage.object_name(f"{self.key}/{name}")
                storage.copy_object(f"{staging}/{name}", target)
                published.append(target)
        except BaseException:
            storage.delete_objects(published)
            raise
        finally:
            storage.delete_objects(f"{staging}/{name}" for name, _ in files)
        self._done = True
        shutil.rmtree(self.path, ignore_errors=True)

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
            self._done = True


class _S3Workspace:
    """A directory of the bucket worked on in ``work/<key>/`` of the cache. What was last pulled or pushed
    is kept beside it (``<key>.sync.json``: per file, the local size and mtime and the object's ETag),
    so that only what changed on either side moves."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        validate_key(key)
        self.key = key
        self._storage = storage
        self.path = storage.cache.local_path(f"work/{key}")
        self._state_path = self.path.with_name(f"{self.path.name}.sync.json")

    def _load(self) -> dict[str, list[Any]]:
        try:
            return cast(dict[str, list[Any]], json.loads(self._state_path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, list[Any]]) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_name(f"{self._state_path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self._state_path)

    @staticmethod
    def _unchanged(path: Path, known: list[Any] | None, etag: str | None) -> bool:
        if known is None or (etag is not None and known[2] != etag):
            return False
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        return [stat.st_size, stat.st_mtime_ns] == known[:2]

    def pull(self) -> None:
        remote = {file.name: file for file in self._storage.list_files(self.key)}
        state = self._load()
        self.path.mkdir(parents=True, exist_ok=True)
        for name, path in _local_files(self.path).items():
            if name not in remote:
                path.unlink()
                state.pop(name, None)
        for name, file in remote.items():
            path = self.path / name
            if self._unchanged(path, state.get(name), file.etag):
                continue
            self._storage.download(f"{self.key}/{name}", path, etag=file.etag)
            stat = path.stat()
            state[name] = [stat.st_size, stat.st_mtime_ns, file.etag]
        _prune_empty_directories(self.path)
        self._save({name: known for name, known in state.items() if name in remote})

    def push(
        self,
        relative: str = "",
        *,
        last: Collection[str] = (),
        skip: Callable[[PurePosixPath], bool] | None = None,
    ) -> None:
        prefix = f"{relative.strip('/')}/" if relative.strip("/") else ""
        if prefix:
            validate_key(prefix.rstrip("/"))

        def skipped(name: str) -> bool:
            return skip is not None and skip(PurePosixPath(name.removeprefix(prefix)))

        storage = self._storage
        base_key = f"{self.key}/{prefix}".rstrip("/")
        remote = {f"{prefix}{file.name}": file for file in storage.list_files(base_key)}
        local = {
            f"{prefix}{name}": path
            for name, path in _local_files(self.path / prefix).items()
            if not skipped(f"{prefix}{name}")
        }
        state = self._load()

        def in_last(name: str) -> bool:
            return PurePosixPath(name).name in last

        for name in sorted(local, key=lambda name: (in_last(name), name)):
            path, file = local[name], remote.get(name)
            if file is not None and self._unchanged(path, state.get(name), file.etag):
                continue
            stat = path.stat()
            etag = storage.upload_file(path, storage.object_name(f"{self.key}/{name}"))
            state[name] = [stat.st_size, stat.st_mtime_ns, etag]
        # Gone locally: the manifests first, so that a directory is never complete while half deleted.
        gone = sorted((name for name in remote if name not in local and not skipped(name)), key=in_last)
        for group in (
            [name for name in gone if in_last(name)],
            [name for name in gone if not in_last(name)],
        ):
            storage.delete_objects(storage.object_name(f"{self.key}/{name}") for name in group)
            for name in group:
                state.pop(name, None)
        self._save(state)

    def release(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._state_path.unlink(missing_ok=True)


class S3Storage:
    """Storage in ``s3://<bucket>/<prefix>``, with a local cache in ``cache_dir`` (see the module)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        cache_dir: str | os.PathLike[str],
        part_bytes: int = 16 << 20,
        client: S3Client | None = None,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's smallest part)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes
        self.cache = LocalStorage(cache_dir)
        # Endpoint, credentials and region: boto3's resolution (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
        # Enough connections for the archive of a run's directory (one per file, at most 32 ranges)
        # and the managed transfers' threads.
        self.client: S3Client = client or boto3.session.Session().client(
            "s3",
            config=Config(signature_version="s3v4", max_pool_connections=64, retries={"mode": "standard"}),
        )
        self._transfer = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)

    @classmethod
    def from_url(cls, url: str, *, cache_dir: str | os.PathLike[str], part_bytes: int) -> S3Storage:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, cache_dir=cache_dir, part_bytes=part_bytes)

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    # ---- names

    def object_name(self, key: str) -> str:
        """The object of ``key`` (validated)."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def temporary_name(self, name: str) -> str:
        return f"{self.prefix}/{_TMP}/{name}" if self.prefix else f"{_TMP}/{name}"

    # ---- requests (the primitives the pending writes, the workspace and the cache are built from)

    def upload_file(self, path: Path, name: str) -> str:
        """Upload the local file ``path`` as the object ``name`` (multipart past one part); its ETag."""
        with _errors(f"uploading {name!r}"):
            self.client.upload_file(str(path), self.bucket, name, Config=self._transfer)
            return _etag(self.client.head_object(Bucket=self.bucket, Key=name)["ETag"])

    def copy_object(self, source: str, target: str) -> None:
        """Copy the object ``source`` to ``target``, server-side (multipart past one part)."""
        with _errors(f"copying {source!r}"):
            self.client.copy(
                {"Bucket": self.bucket, "Key": source}, self.bucket, target, Config=self._transfer
            )

    def delete_objects(self, names: Iterable[str]) -> None:
        """Delete the objects ``names`` (missing ones are no error), a thousand per request."""
        batch: list[str] = []

        def send() -> None:
            with _errors("deleting objects"):
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
                )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(
                    f"S3 storage could not delete {first.get('Key')!r}: {first.get('Message')}"
                )
            batch.clear()

        for name in names:
            batch.append(name)
            if len(batch) == 1000:
                send()
        if batch:
            send()

    def get_body(self, key: str, start: int = 0, end: int | None = None, etag: str | None = None) -> Any:
        """The streamed body of a GET of ``key``, of the bytes ``start`` to ``end`` (exclusive), only if
        its ETag is ``etag`` when one is given."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if start or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            arguments["IfMatch"] = f'"{etag}"'
        with _errors(f"reading {key!r}"):
            return self.client.get_object(**arguments)["Body"]

    def download(self, key: str, path: Path, *, etag: str | None = None) -> None:
        """The object ``key`` into the local file ``path`` (written aside, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        try:
            body = self.get_body(key, etag=etag)
            with body, open(partial, "wb") as out, _errors(f"reading {key!r}"):
                shutil.copyfileobj(body, out, _CHUNK)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def _listing(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _errors(f"listing {prefix!r}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from cast(list[dict[str, Any]], page.get("Contents", []))

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            with _errors(f"reading {key!r}"):
                return cast(
                    dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
                )
        except FileNotFoundError:
            return None

    # ---- the Storage interface

    def open_write(self, key: str) -> _S3PendingObject:
        return _S3PendingObject(self, key)

    def open_tree(self, key: str) -> _S3PendingTree:
        return _S3PendingTree(self, key)

    def scratch_dir(self) -> contextlib.AbstractContextManager[Path]:
        return self.cache.scratch_dir()

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        validate_key(key)
        return cast(BinaryIO, io.BufferedReader(_ObjectReader(self, key, start, end), _CHUNK))

    def list_files(self, key: str) -> list[StoredFile]:
        directory = f"{self.object_name(key)}/"
        files = [
            StoredFile(
                name=item["Key"].removeprefix(directory),
                size=item["Size"],
                modified_ns=_time_ns(item["LastModified"]),
                etag=_etag(item["ETag"]),
            )
            for item in self._listing(directory)
        ]
        return sorted(files, key=lambda file: file.name)

    def _describe(self, key: str) -> tuple[bool, list[StoredFile]]:
        """Whether ``key`` is a file, and its files (a file: itself, named "")."""
        head = self._head(key)
        if head is not None:
            modified = _time_ns(head["LastModified"])
            return True, [StoredFile("", head["ContentLength"], modified, _etag(head["ETag"]))]
        files = self.list_files(key)
        if not files:
            raise FileNotFoundError(f"storage key {key!r} is missing")
        return False, files

    def fetch(self, key: str, *, include: Callable[[str], bool] | None = None) -> Path:
        is_file, files = self._describe(key)
        if include is not None and not is_file:
            files = [file for file in files if include(file.name)]
        name = PurePosixPath(key).name
        entry = self.cache.local_path(f"objects/{key}/@{_fingerprint(files)}")
        if entry.exists():
            return entry / name
        staging = self.cache.new_temp_path(suffix=".fetch")
        try:
            for file in files:
                target = staging / name / file.name if file.name else staging / name
                self.download(f"{key}/{file.name}" if file.name else key, target, etag=file.etag)
            if not is_file:
                (staging / name).mkdir(parents=True, exist_ok=True)  # a directory without files kept
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, entry)
            except OSError:
                if not entry.exists():  # not another process's copy, fetched meanwhile
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("fetched %s into the cache (%d file(s))", key, len(files))
        return entry / name

    def workspace(self, key: str) -> _S3Workspace:
        return _S3Workspace(self, key)

    def local_cache_dir(self, key: str) -> Path:
        return self.cache.local_path(key)

    def exists(self, key: str) -> bool:
        if self._head(key) is not None:
            return True
        with _errors(f"listing {key!r}"):
            answer = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.object_name(key)}/", MaxKeys=1
            )
        return bool(answer.get("KeyCount") or answer.get("Contents"))

    def size(self, key: str) -> int:
        _, files = self._describe(key)
        return sum(file.size for file in files)

    def delete(self, key: str) -> None:
        """The object ``key`` and every object under ``key/`` (a prefix delete)."""
        name = self.object_name(key)
        self.delete_objects([name, *(item["Key"] for item in self._listing(f"{name}/"))])

    def presigned_url(self, key: str, *, expires_seconds: int, filename: str | None = None) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
        with _errors(f"signing {key!r}"):
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)

    def remove_stale_temporaries(self, older_than: float) -> list[str]:
        """Multipart uploads and ``.tmp/`` objects nothing has written to for ``older_than`` seconds,
        and the local cache's temporaries."""
        cutoff = time.time() - older_than
        removed = [f"cache {name}" for name in self.cache.remove_stale_temporaries(older_than)]
        uploads = self.client.get_paginator("list_multipart_uploads")
        with _errors("listing multipart uploads"):
            pages = list(
                uploads.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
            )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() >= cutoff:
                    continue
                with _errors("listing parts"):
                    parts = self.client.list_parts(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    ).get("Parts", [])
                if any(part["LastModified"].timestamp() >= cutoff for part in parts):
                    continue  # a part written lately: an upload in progress
                with contextlib.suppress(FileNotFoundError), _errors("aborting an upload"):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                removed.append(f"multipart upload of {upload['Key']}")
        groups: dict[str, list[dict[str, Any]]] = {}
        staging = self.temporary_name("")
        for item in self._listing(staging):
            groups.setdefault(item["Key"].removeprefix(staging).split("/")[0], []).append(item)
        for token, items in sorted(groups.items()):
            if all(item["LastModified"].timestamp() < cutoff for item in items):
                self.delete_objects(item["Key"] for item in items)
                removed.append(f"{_TMP}/{token}")
        return removed
