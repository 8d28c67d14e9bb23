"""A claimed run's inputs, located from database rows only: corpora by their ``storage_key``, the base
model through the base-model registry (built-ins, uploaded checkpoints, other runs' outputs), the output
and prepared-data directories by :mod:`app.storage.keys` (the prepared-data cache is shared by every run:
an entry's key covers the corpus digest, the tokenizer and every preparation parameter). Nothing a client
typed is ever used as a path.

The paths are on this machine: files are fetched (:meth:`~app.storage.interface.Storage.fetch`; with S3
storage, into the worker's cache, once per content), the run's directory is its workspace (pulled and
pushed by :mod:`worker.executor`), and the prepared data live in the storage's local cache directory.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.base_models.service import resolve_base_model
from app.config import Settings
from app.errors import ValidationFailed
from app.models import Corpus, Dataset, Run, Tenant
from app.storage import Storage
from app.storage.keys import PREPARED_DATA, run_directory_key
from worker.failures import RunFailure
from worker.job import TrainingJob

__all__ = ["InputError", "build_training_job", "dataset_paths"]


class InputError(Exception):
    """An input the run names cannot be used; ``failure`` is what its owner is told."""

    def __init__(self, failure: RunFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _corpus_path(
    session: Session, storage: Storage, run: Run, corpus_id: str | None, role: str
) -> str | None:
    if corpus_id is None:
        return None
    corpus = session.get(Corpus, corpus_id)
    if corpus is None or corpus.tenant_id != run.tenant_id:
        raise InputError(RunFailure("input_error", f"the {role} {corpus_id} no longer exists"))
    try:
        return str(storage.fetch(corpus.storage_key))
    except FileNotFoundError:
        raise InputError(
            RunFailure(
                "input_error", f"the file of the {role} {corpus_id} is missing from storage; ask the operator"
            )
        ) from None


def dataset_paths(
    session: Session, storage: Storage, dataset_id: str | None, *, tenant_id: str
) -> tuple[Path, Path | None]:
    """The local paths of a labelled dataset's training file and test file (None without one), named
    ``train.<format>``/``test.<format>`` (the extension gives the reader the format; pass the row's
    ``filename``/``test_filename`` as ``name`` to read_labelled_dataset, and ``max_bytes=None``: the
    upload was held to ``MAX_DATASET_BYTES``). InputError when the dataset or a file is gone."""
    dataset = session.get(Dataset, dataset_id) if dataset_id is not None else None
    if dataset is None or dataset.tenant_id != tenant_id:
        raise InputError(RunFailure("input_error", f"the dataset {dataset_id} no longer exists"))
    try:
        train = storage.fetch(dataset.storage_key)
        test = storage.fetch(dataset.test_storage_key) if dataset.test_storage_key else None
    except FileNotFoundError:
        raise InputError(
            RunFailure(
                "input_error", f"a file of the dataset {dataset.id} is missing from storage; ask the operator"
            )
        ) from None
    return train, test


def build_training_job(session: Session, run_id: str, settings: Settings, storage: Storage) -> TrainingJob:
    """The :class:`TrainingJob` of ``run_id``; InputError when one of its inputs is gone."""
    run = session.get(Run, run_id)
    if run is None:
        raise InputError(RunFailure("input_error", f"run {run_id} no longer exists"))
    tenant = session.get(Tenant, run.tenant_id)
    if tenant is None:
        raise InputError(RunFailure("input_error", f"the tenant of run {run_id} no longer exists"))
    if run.corpus_id is None:
        raise InputError(RunFailure("input_error", "the run's corpus no longer exists"))
    corpus = _corpus_path(session, storage, run, run.corpus_id, "corpus")
    eval_corpus = _corpus_path(session, storage, run, run.eval_corpus_id, "eval corpus")
    reference_corpus = _corpus_path(session, storage, run, run.reference_corpus_id, "reference corpus")
    replay_corpus = _corpus_path(session, storage, run, run.replay_corpus_id, "replay corpus")
    try:
        base = resolve_base_model(session, tenant, run.base_model, settings=settings, storage=storage)
    except ValidationFailed as exc:
        raise InputError(RunFailure("base_model_error", exc.message)) from None
    assert corpus is not None
    return TrainingJob(
        run_id=run.id,
        base_model=base.source,
        base_model_spec=str(base.spec),
        corpus=corpus,
        corpus_id=run.corpus_id,
        out_dir=str(storage.workspace(run_directory_key(run.id)).path),
        cache_dir=str(storage.local_cache_dir(PREPARED_DATA)),
        hyperparameters=dict(run.hyperparameters or {}),
        eval_corpus=eval_corpus,
        eval_corpus_id=run.eval_corpus_id if eval_corpus else None,
        reference_corpus=reference_corpus,
        reference_corpus_id=run.reference_corpus_id if reference_corpus else None,
        replay_corpus=replay_corpus,
        replay_corpus_id=run.replay_corpus_id if replay_corpus else None,
        hf_hub_offline=settings.hf_hub_offline,
        devices=int((run.resources or {}).get("devices") or 1),
    )
