"""Corpora: streaming upload with validation, listing, deletion.

An upload is hashed, validated (:class:`~worker.pretraining.corpus.CorpusScanner`, which also holds a
.txt.gz to the caps on its decompression as it inflates) and written to a temporary storage object in one
pass over the incoming chunks. Nothing is kept when it fails: the temporary object is removed and no row
is written.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.corpora import repository
from app.db import on_commit, on_rollback
from app.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.ids import new_id
from app.models import Corpus, Tenant
from app.pagination import Page
from app.storage import Storage
from app.storage.keys import corpus_key
from app.uploads import IncomingFile, clean_filename, inflated_too_much
from worker.pretraining.corpus import CorpusFormatError, CorpusScanner
from worker.pretraining.inflate import InflateLimitExceeded, InflateLimits

__all__ = ["CorpusUpload", "delete_corpus", "get_corpus", "list_corpora", "upload_corpus"]

CORPUS_SUFFIXES = (".txt.gz", ".txt")
GZIP_MAGIC = b"\x1f\x8b"
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class CorpusUpload:
    corpus: Corpus
    created: bool  # False: the tenant already had this exact content, and ``corpus`` is that one


def upload_corpus(
    session: Session, storage: Storage, settings: Settings, tenant: Tenant, upload: IncomingFile
) -> CorpusUpload:
    """Validate and store an uploaded corpus (``.txt`` or ``.txt.gz``).

    Raises ValidationFailed (``file``: wrong type, or the first format problem with its line and byte
    offset; ``name``), PayloadTooLarge beyond ``MAX_UPLOAD_BYTES``, or as soon as the text inflates beyond
    ``MAX_DECOMPRESSED_BYTES`` or ``MAX_COMPRESSION_RATIO`` times what was read.
    """
    filename = _checked_filename(upload.filename)
    limit = settings.max_upload_bytes
    head, chunks = _peek(upload.chunks(), len(GZIP_MAGIC))
    corpus_id = new_id("corp")
    key = corpus_key(corpus_id, gzip=head.startswith(GZIP_MAGIC))
    scanner = CorpusScanner(
        path=filename,
        limits=InflateLimits(
            max_bytes=settings.max_decompressed_bytes, max_ratio=settings.max_compression_ratio
        ),
    )
    with storage.open_write(key) as pending:
        try:
            for chunk in chunks:
                if pending.bytes_written + len(chunk) > limit:
                    raise PayloadTooLarge(limit, param="file", what="corpus")
                scanner.feed(chunk)
                pending.write(chunk)
            report = scanner.finish()
        except CorpusFormatError as exc:
            raise ValidationFailed("file", f"invalid corpus: {exc}") from None
        except InflateLimitExceeded as exc:
            raise inflated_too_much(
                exc, what="corpus", filename=filename, size_setting="MAX_DECOMPRESSED_BYTES"
            ) from None
        name = _corpus_name(upload.fields().get("name"), filename)

        stats = report.stats
        existing = repository.get_by_sha256(session, tenant.id, stats.sha256)
        if existing is not None:
            return CorpusUpload(corpus=existing, created=False)  # the temporary object is aborted
        corpus = Corpus(
            id=corpus_id,
            tenant_id=tenant.id,
            name=name,
            filename=filename,
            storage_key=key,
            bytes=stats.bytes,
            sha256=stats.sha256,
            documents=stats.documents,
            sentences=stats.sentences,
            stats=stats.to_dict(),
            warnings=[warning.model_dump(exclude_none=True) for warning in report.warnings],
        )
        try:
            with session.begin_nested():
                repository.add(session, corpus)
        except IntegrityError:
            # The same content, uploaded concurrently by the same tenant, was stored first.
            existing = repository.get_by_sha256(session, tenant.id, stats.sha256)
            if existing is None:
                raise
            return CorpusUpload(corpus=existing, created=False)
        pending.commit()
    on_rollback(session, lambda: storage.delete(key))
    return CorpusUpload(corpus=corpus, created=True)


def list_corpora(session: Session, tenant: Tenant, *, limit: int, after: str | None) -> Page[Corpus]:
    return repository.page(session, tenant.id, limit=limit, after=after)


def get_corpus(session: Session, tenant: Tenant, corpus_id: str) -> Corpus:
    corpus = repository.get(session, tenant.id, corpus_id)
    if corpus is None:
        raise NotFound("corpus", corpus_id)
    return corpus


def delete_corpus(session: Session, storage: Storage, tenant: Tenant, corpus_id: str) -> None:
    """Delete the row now and the file once that is committed; Conflict while an active run uses it."""
    # The row lock makes a concurrent run submission wait for this transaction (its foreign-key check
    # needs the row), so no run can start using a corpus that is being deleted.
    corpus = repository.get(session, tenant.id, corpus_id, for_update=True)
    if corpus is None:
        raise NotFound("corpus", corpus_id)
    runs = repository.active_runs_using(session, corpus.id)
    if runs:
        raise Conflict(
            f"corpus {corpus.id!r} is used by active run(s) {', '.join(runs[:5])}; cancel them or wait "
            "for them to finish, then delete it"
        )
    key = corpus.storage_key
    repository.delete(session, corpus)
    on_commit(session, lambda: storage.delete(key))


def _checked_filename(raw: str) -> str:
    filename = clean_filename(raw)
    if not filename.lower().endswith(CORPUS_SUFFIXES):
        raise ValidationFailed(
            "file",
            f"unsupported file type {filename!r}: upload the corpus as .txt or .txt.gz (UTF-8 text, one "
            "sentence per line, a blank line between documents)",
        )
    return filename


def _corpus_name(given: str | None, filename: str) -> str:
    if given is not None and given.strip():
        name = given.strip()
        if len(name) > MAX_NAME_CHARS:
            raise ValidationFailed("name", f"the name is longer than {MAX_NAME_CHARS} characters")
        return name
    lower = filename.lower()
    suffix = next(s for s in CORPUS_SUFFIXES if lower.endswith(s))
    return filename[: -len(suffix)] or filename


def _peek(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """At least ``size`` leading bytes (fewer if the stream is shorter), and an iterator over the whole
    stream again."""
    head = b""
    consumed: list[bytes] = []
    for chunk in chunks:
        consumed.append(chunk)
        head += chunk[:size]
        if len(head) >= size:
            break
    return head, itertools.chain(consumed, chunks)
