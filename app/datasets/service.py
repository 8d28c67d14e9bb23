"""Labelled datasets: upload (a training file and an optional test file) with validation, listing, deletion.

An upload's files are streamed, hashed and size-capped (``MAX_DATASET_BYTES``, both files together) into a
scratch directory, then validated by :func:`worker.evaluation.labelled.read_labelled_dataset` (the reader
the worker uses), then copied to storage under keys derived from the new row's id. Nothing is kept when it
fails: the scratch directory goes at the end of the request, the storage objects are committed only once
the row is written, and removed again if the transaction rolls back. Compressed files are not accepted
(labelled sets are small), so there are no decompression caps to apply.
"""

from __future__ import annotations

import hashlib
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets import repository
from app.db import on_commit, on_rollback
from app.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.ids import new_id
from app.models import Dataset, Tenant
from app.pagination import Page
from app.storage import Storage
from app.storage.keys import dataset_file_key, dataset_key
from app.uploads import IncomingFiles, clean_filename
from worker.evaluation.labelled import (
    DatasetFormat,
    DatasetFormatError,
    LabelledDataset,
    dataset_format,
    read_labelled_dataset,
)

__all__ = [
    "FILE_FIELDS",
    "DatasetUpload",
    "content_sha256",
    "delete_dataset",
    "get_dataset",
    "list_datasets",
    "upload_dataset",
]

TRAIN_FIELD, TEST_FIELD = "file", "test_file"
FILE_FIELDS = (TRAIN_FIELD, TEST_FIELD)
MAX_NAME_CHARS = 200
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetUpload:
    dataset: Dataset
    created: bool  # False: the tenant already had this exact content, and ``dataset`` is that one


@dataclass(frozen=True)
class _ReceivedFile:
    """A file of the upload in the scratch directory."""

    field: str
    filename: str
    format: DatasetFormat
    path: Path
    bytes: int
    sha256: str


def content_sha256(train_sha256: str, test_sha256: str | None) -> str:
    """What identifies a dataset's content: the training file's digest, or with a test file the SHA-256 of
    the two hex digests, each followed by a newline (so a test file never collides with none)."""
    if test_sha256 is None:
        return train_sha256
    return hashlib.sha256(f"{train_sha256}\n{test_sha256}\n".encode()).hexdigest()


def upload_dataset(
    session: Session, storage: Storage, settings: Settings, tenant: Tenant, upload: IncomingFiles
) -> DatasetUpload:
    """Validate and store an uploaded labelled dataset: multipart ``file`` (the training set), optional
    ``test_file`` and ``name``.

    Raises ValidationFailed (``file``/``test_file``: no training file, an extension other than .tsv, .csv
    or .jsonl, or the first problem the reader finds, with its file, line and field; ``test_file``: labels
    or columns that differ from the training file's; ``name``), PayloadTooLarge beyond
    ``MAX_DATASET_BYTES`` (both files together).
    """
    with storage.scratch_dir() as scratch:
        received = _receive(upload, scratch, settings.max_dataset_bytes)
        name_field = upload.fields().get("name")
        train_file = received.get(TRAIN_FIELD)
        if train_file is None:
            raise ValidationFailed(
                TRAIN_FIELD, f"no training file: send it in a form field named {TRAIN_FIELD!r}"
            )
        test_file = received.get(TEST_FIELD)
        train = _read(train_file)
        test = None
        if test_file is not None:
            test = _read(test_file, known_labels=train.labels)
            if test.has_text_pair != train.has_text_pair:
                which = "has a" if train.has_text_pair else "has no"
                raise ValidationFailed(
                    TEST_FIELD,
                    f"invalid dataset: the training file {which} text_pair column and the test file "
                    f"{test_file.filename!r} does not agree; both need the same columns",
                )
        name = _dataset_name(name_field, train_file.filename)
        sha256 = content_sha256(train_file.sha256, test_file.sha256 if test_file else None)
        existing = repository.get_by_sha256(session, tenant.id, sha256)
        if existing is not None:
            return DatasetUpload(dataset=existing, created=False)
        dataset = _new_dataset(tenant, name, sha256, (train_file, train), (test_file, test))
        with ExitStack() as stack:
            pending = []
            for file, key in ((train_file, dataset.storage_key), (test_file, dataset.test_storage_key)):
                if file is not None and key is not None:
                    pending.append(stack.enter_context(storage.open_write(key)))
                    with open(file.path, "rb") as source:
                        shutil.copyfileobj(source, pending[-1], _COPY_CHUNK)
            try:
                with session.begin_nested():
                    repository.add(session, dataset)
            except IntegrityError:
                # The same content, uploaded concurrently by the same tenant, was stored first.
                existing = repository.get_by_sha256(session, tenant.id, sha256)
                if existing is None:
                    raise
                return DatasetUpload(dataset=existing, created=False)  # the pending objects are aborted
            for stored in pending:
                stored.commit()
    key = dataset_key(dataset.id)
    on_rollback(session, lambda: storage.delete(key))
    return DatasetUpload(dataset=dataset, created=True)


def list_datasets(session: Session, tenant: Tenant, *, limit: int, after: str | None) -> Page[Dataset]:
    return repository.page(session, tenant.id, limit=limit, after=after)


def get_dataset(session: Session, tenant: Tenant, dataset_id: str) -> Dataset:
    dataset = repository.get(session, tenant.id, dataset_id)
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


def delete_dataset(session: Session, storage: Storage, tenant: Tenant, dataset_id: str) -> None:
    """Delete the row now and the files once that is committed; Conflict while an evaluation uses it."""
    # The row lock makes a concurrent evaluation submission wait for this transaction (its foreign-key
    # check needs the row), so nothing starts using a dataset that is being deleted.
    dataset = repository.get(session, tenant.id, dataset_id, for_update=True)
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    in_use = repository.dataset_in_use(session, dataset.id)
    if in_use is not None:
        raise Conflict(f"dataset {dataset.id!r} is in use: {in_use}")
    key = dataset_key(dataset.id)
    repository.delete(session, dataset)
    on_commit(session, lambda: storage.delete(key))


def _receive(upload: IncomingFiles, scratch: Path, limit: int) -> dict[str, _ReceivedFile]:
    """The upload's files, written to ``scratch`` as they arrive, hashed and held to ``limit`` bytes in
    all; by form field."""
    received: dict[str, _ReceivedFile] = {}
    total = 0
    for part in upload.files():
        filename = clean_filename(part.filename)
        try:
            file_format = dataset_format(filename)
        except DatasetFormatError as exc:
            raise ValidationFailed(part.field, f"unsupported file type: {exc}") from None
        path = scratch / f"{part.field}.{file_format}"
        digest = hashlib.sha256()
        size = 0
        with open(path, "wb") as out:
            for chunk in part.chunks():
                size += len(chunk)
                if total + size > limit:
                    raise PayloadTooLarge(
                        limit, param=part.field, what="dataset", setting="MAX_DATASET_BYTES"
                    )
                digest.update(chunk)
                out.write(chunk)
        total += size
        received[part.field] = _ReceivedFile(
            part.field, filename, file_format, path, size, digest.hexdigest()
        )
    return received


def _read(file: _ReceivedFile, *, known_labels: tuple[str, ...] | None = None) -> LabelledDataset:
    try:
        # The size was capped as it arrived (MAX_DATASET_BYTES), not by the reader's own default.
        return read_labelled_dataset(file.path, name=file.filename, known_labels=known_labels, max_bytes=None)
    except DatasetFormatError as exc:
        raise ValidationFailed(file.field, f"invalid dataset: {exc}") from None


def _new_dataset(
    tenant: Tenant,
    name: str,
    sha256: str,
    train: tuple[_ReceivedFile, LabelledDataset],
    test: tuple[_ReceivedFile | None, LabelledDataset | None],
) -> Dataset:
    dataset_id = new_id("ds")
    train_file, train_set = train
    test_file, test_set = test
    train_counts = train_set.label_counts()
    test_counts = test_set.label_counts() if test_set is not None else None
    return Dataset(
        id=dataset_id,
        tenant_id=tenant.id,
        name=name,
        sha256=sha256,
        filename=train_file.filename,
        format=train_file.format,
        storage_key=dataset_file_key(dataset_id, "train", train_file.format),
        bytes=train_file.bytes,
        examples=len(train_set.examples),
        test_filename=test_file.filename if test_file else None,
        test_format=test_file.format if test_file else None,
        test_storage_key=dataset_file_key(dataset_id, "test", test_file.format) if test_file else None,
        test_bytes=test_file.bytes if test_file else None,
        test_examples=len(test_set.examples) if test_set is not None else None,
        labels=[
            {
                "label": label,
                "examples": count,
                "test_examples": None if test_counts is None else test_counts.get(label, 0),
            }
            for label, count in train_counts.items()
        ],
        has_text_pair=train_set.has_text_pair,
        ignored_columns=list(train_set.ignored_columns),
    )


def _dataset_name(given: str | None, filename: str) -> str:
    if given is not None and given.strip():
        name = given.strip()
        if len(name) > MAX_NAME_CHARS:
            raise ValidationFailed("name", f"the name is longer than {MAX_NAME_CHARS} characters")
        return name
    return Path(filename).stem or filename
