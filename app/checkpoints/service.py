"""Uploaded base checkpoints: streaming upload, safe extraction, validation without torch.

The archive is streamed to a scratch file (capped at ``MAX_UPLOAD_BYTES``), extracted into a pending
storage directory, checked (BERT config, safetensors weights, tokenizer), and committed under
``checkpoints/<id>/``. Any failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.base_models.spec import BaseModelSpec
from app.checkpoints import repository
from app.checkpoints.extract import ArchiveError, ArchiveTooLarge, archive_kind, extract_checkpoint_archive
from app.config import Settings
from app.db import on_commit, on_rollback
from app.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.evaluations import repository as evaluations_repository
from app.ids import new_id
from app.models import Checkpoint, Tenant
from app.pagination import Page
from app.storage import Storage
from app.storage.keys import checkpoint_key
from app.uploads import IncomingFile, clean_filename, inflated_too_much
from worker.pretraining.model_files import BaseModelError, inspect_model_dir, training_state_note
from worker.pretraining.records import RunWarning

__all__ = [
    "TRAINING_STATE_LEFT_OUT",
    "UploadedCheckpoint",
    "delete_checkpoint",
    "get_checkpoint",
    "list_checkpoints",
    "upload_checkpoint",
]

MAX_NAME_CHARS = 200
TRAINING_STATE_LEFT_OUT = "training_state_left_out"


@dataclass
class UploadedCheckpoint:
    checkpoint: Checkpoint
    warnings: list[RunWarning] = field(default_factory=list)  # what the upload did not keep


def upload_checkpoint(
    session: Session, storage: Storage, settings: Settings, tenant: Tenant, upload: IncomingFile
) -> UploadedCheckpoint:
    filename = clean_filename(upload.filename)
    kind = archive_kind(filename)
    if kind is None:
        raise ValidationFailed(
            "file",
            f"unsupported file type {filename!r}: upload a .tar.gz, .tar or .zip of a save_pretrained "
            "directory (config.json, model.safetensors, tokenizer files)",
        )
    limit = settings.max_upload_bytes
    checkpoint_id = new_id("ckpt")
    key = checkpoint_key(checkpoint_id)
    with storage.scratch_dir() as scratch:
        archive = scratch / f"upload.{kind}"
        digest = hashlib.sha256()
        size = 0
        with open(archive, "wb") as out:
            for chunk in upload.chunks():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(limit, param="file", what="checkpoint archive")
                digest.update(chunk)
                out.write(chunk)
        name = _checkpoint_name(upload.fields().get("name"), filename)

        with storage.open_tree(key) as tree:
            try:
                files = extract_checkpoint_archive(
                    archive,
                    kind,
                    tree.path,
                    max_members=settings.max_checkpoint_members,
                    max_bytes=settings.max_checkpoint_unpacked_bytes,
                    max_ratio=settings.max_compression_ratio,
                )
            except ArchiveTooLarge as exc:
                raise inflated_too_much(
                    exc.exceeded,
                    what="checkpoint archive",
                    filename=filename,
                    size_setting="MAX_CHECKPOINT_UNPACKED_BYTES",
                ) from None
            except ArchiveError as exc:
                raise ValidationFailed("file", f"invalid checkpoint archive: {exc}") from None
            try:
                summary = inspect_model_dir(tree.path)
            except BaseModelError as exc:
                raise ValidationFailed("file", f"invalid checkpoint: {exc}") from None
            checkpoint = Checkpoint(
                id=checkpoint_id,
                tenant_id=tenant.id,
                name=name,
                storage_key=key,
                config=summary.config_summary,
                has_pretraining_heads=summary.has_pretraining_heads,
                parameters=summary.parameters,
                bytes=files.bytes,
                sha256=digest.hexdigest(),
            )
            repository.add(session, checkpoint)
            tree.commit()
    on_rollback(session, lambda: storage.delete(key))
    warnings = []
    if files.left_out:
        warnings.append(RunWarning(code=TRAINING_STATE_LEFT_OUT, message=training_state_note(files.left_out)))
    return UploadedCheckpoint(checkpoint, warnings)


def list_checkpoints(session: Session, tenant: Tenant, *, limit: int, after: str | None) -> Page[Checkpoint]:
    return repository.page(session, tenant.id, limit=limit, after=after)


def get_checkpoint(session: Session, tenant: Tenant, checkpoint_id: str) -> Checkpoint:
    checkpoint = repository.get(session, tenant.id, checkpoint_id)
    if checkpoint is None:
        raise NotFound("checkpoint", checkpoint_id)
    return checkpoint


def delete_checkpoint(session: Session, storage: Storage, tenant: Tenant, checkpoint_id: str) -> None:
    """Delete the row now and the files once that is committed; Conflict while an active run starts
    from it."""
    checkpoint = repository.get(session, tenant.id, checkpoint_id, for_update=True)
    if checkpoint is None:
        raise NotFound("checkpoint", checkpoint_id)
    runs = repository.active_runs_using(session, tenant.id, str(BaseModelSpec.checkpoint(checkpoint.id)))
    if runs:
        raise Conflict(
            f"checkpoint {checkpoint.id!r} is the base model of active run(s) {', '.join(runs[:5])}; cancel "
            "them or wait for them to finish, then delete it"
        )
    evaluations = evaluations_repository.active_using_model(
        session, tenant.id, str(BaseModelSpec.checkpoint(checkpoint.id))
    )
    if evaluations:
        raise Conflict(
            f"checkpoint {checkpoint.id!r} is compared by active evaluation(s) {', '.join(evaluations[:5])}; "
            "cancel them or wait for them to finish, then delete it"
        )
    key = checkpoint.storage_key
    repository.delete(session, checkpoint)
    on_commit(session, lambda: storage.delete(key))


def _checkpoint_name(given: str | None, filename: str) -> str:
    if given is not None and given.strip():
        name = given.strip()
        if len(name) > MAX_NAME_CHARS:
            raise ValidationFailed("name", f"the name is longer than {MAX_NAME_CHARS} characters")
        return name
    lower = filename.lower()
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if lower.endswith(suffix):
            return filename[: -len(suffix)] or filename
    return filename
