"""Download archives of a run: its final model and its kept checkpoints (the archives themselves are
laid out and streamed by :mod:`app.runs.download_archive`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.base_models.service import final_model_key
from app.errors import Conflict, NotFound
from app.models import Run, Tenant
from app.runs import repository
from app.runs.download_archive import ArchiveSource, StreamedArchive, plan_archive
from app.runs.service import get_run
from app.runs.states import RunStatus
from app.storage import Storage
from app.storage.keys import run_archives_key

__all__ = ["checkpoint_archive", "model_archive"]


def checkpoint_archive(
    session: Session,
    storage: Storage,
    tenant: Tenant,
    run_id: str,
    step: int,
    *,
    include_training_state: bool,
) -> StreamedArchive:
    run = get_run(session, tenant, run_id)
    checkpoint = repository.checkpoint(session, run.id, step)
    if checkpoint is None:
        raise NotFound("checkpoint", f"{run.id}@{step}", param="step")
    return _run_archive(
        storage,
        run,
        checkpoint.storage_key,
        f"{run.id}-checkpoint-{step}",
        include_training_state=include_training_state,
        missing=f"the files of checkpoint {step} of run {run.id} are no longer in storage (rotated away?); "
        f"list the kept ones with GET /v1/runs/{run.id}/checkpoints",
    )


def model_archive(
    session: Session, storage: Storage, tenant: Tenant, run_id: str, *, include_training_state: bool
) -> StreamedArchive:
    run = get_run(session, tenant, run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Conflict(
            f"run {run.id!r} is {run.status.value}: only a succeeded run has a final model (download one of "
            "its checkpoints instead)"
        )
    return _run_archive(
        storage,
        run,
        final_model_key(run),
        f"{run.id}-model",
        include_training_state=include_training_state,
        missing=f"the final model of run {run.id} is missing from storage; ask the operator",
    )


def _run_archive(
    storage: Storage, run: Run, directory_key: str, root: str, *, include_training_state: bool, missing: str
) -> StreamedArchive:
    """The .tar of one of ``run``'s directories (its digest kept beside the run's output); Conflict
    (``missing``) when the directory is gone from storage."""
    source = ArchiveSource(
        directory_key=directory_key,
        root=root,
        cache_prefix=run_archives_key(run.id),
        include_training_state=include_training_state,
    )
    try:
        return plan_archive(storage, source)
    except FileNotFoundError:
        raise Conflict(missing) from None
