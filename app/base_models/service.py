"""Base models: what a run may start from (see :mod:`app.base_models.spec` for the forms of a spec),
listed for clients and resolved for the run submission and the worker. ``hf:`` models are fetched by the
worker and unavailable when the workers are offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session

from app.base_models import repository
from app.base_models.schemas import BaseModelPublic
from app.base_models.spec import SPEC_FORMS, BaseModelKind, BaseModelSpec, BaseModelSpecError
from app.checkpoints import repository as checkpoints_repository
from app.checkpoints.schemas import CheckpointConfig
from app.config import Settings, get_settings
from app.errors import ValidationFailed
from app.models import Run, Tenant
from app.runs.states import RunStatus
from app.storage import Storage, get_storage
from app.storage.keys import run_model_key
from worker.pretraining.builtin_models import BUILTIN_MODELS, BuiltinModel
from worker.pretraining.model_files import BaseModelError, ModelDirSummary, inspect_model_dir

__all__ = ["ResolvedBaseModel", "final_model_key", "list_base_models", "resolve_base_model"]

PARAM = "base_model"


@dataclass(frozen=True)
class ResolvedBaseModel:
    """Where a base model's files are. ``spec`` is normalized (store ``str(spec)`` on the run);
    ``local_path`` is set for every kind but ``hf``, whose repository the worker downloads."""

    spec: BaseModelSpec
    local_path: Path | None = None
    storage_key: str | None = None  # checkpoint and run kinds: the directory in storage

    @property
    def kind(self) -> BaseModelKind:
        return self.spec.kind

    @property
    def source(self) -> str:
        """What to hand to the training library's loader: a local directory or a hub id."""
        return str(self.local_path) if self.local_path is not None else self.spec.name


def final_model_key(run: Run) -> str:
    """The final model's directory: recorded by the worker when the run succeeded."""
    return run.output_storage_key or run_model_key(run.id)


def resolve_base_model(
    session: Session,
    tenant: Tenant,
    spec: str,
    *,
    settings: Settings | None = None,
    storage: Storage | None = None,
) -> ResolvedBaseModel:
    """Resolve a spec for ``tenant``; ValidationFailed (param ``base_model``) when it names nothing
    usable. Another tenant's checkpoint or run is reported exactly like a missing one."""
    settings = settings or get_settings()
    try:
        parsed = BaseModelSpec.parse(spec)
    except BaseModelSpecError as exc:
        raise ValidationFailed(PARAM, f"{exc}. {_SPEC_HELP}") from None
    if parsed.kind == "builtin":
        return _resolve_builtin(parsed)
    if parsed.kind == "hf":
        return _resolve_hub(parsed, settings)
    storage = storage or get_storage(settings)
    if parsed.kind == "checkpoint":
        return _resolve_checkpoint(session, tenant, parsed, storage)
    return _resolve_run(session, tenant, parsed, storage)


def list_base_models(session: Session, tenant: Tenant, settings: Settings) -> list[BaseModelPublic]:
    """Built-ins, the hub pattern, the tenant's checkpoints and succeeded runs, in that order."""
    models = [_builtin_public(model) for model in BUILTIN_MODELS.values()]
    models.append(
        BaseModelPublic(
            id="hf:<repo_id>",
            kind="hf",
            name="Hugging Face hub",
            description="Any BERT repository of the Hugging Face hub with safetensors weights, e.g. "
            "hf:google-bert/bert-base-uncased"
            + (" (unavailable: the workers are offline, HF_HUB_OFFLINE)" if settings.hf_hub_offline else ""),
            available=not settings.hf_hub_offline,
        )
    )
    for checkpoint in checkpoints_repository.all_for_tenant(session, tenant.id):
        models.append(
            BaseModelPublic(
                id=str(BaseModelSpec.checkpoint(checkpoint.id)),
                kind="checkpoint",
                name=checkpoint.name,
                available=True,
                config=CheckpointConfig.model_validate(checkpoint.config),
                has_pretraining_heads=checkpoint.has_pretraining_heads,
                parameters=checkpoint.parameters,
                created_at=checkpoint.created_at,
            )
        )
    runs = repository.succeeded_runs(session, tenant.id)
    steps = repository.checkpoint_steps(session, [run.id for run in runs])
    for run in runs:
        models.append(
            BaseModelPublic(
                id=str(BaseModelSpec.run(run.id)),
                kind="run",
                name=run.name,
                description=f"the final model of run {run.id} (from {run.base_model})",
                available=True,
                has_pretraining_heads=True,  # runs train and save both heads
                created_at=run.finished_at or run.created_at,
                steps=steps.get(run.id, []),
            )
        )
    return models


_SPEC_HELP = f"Use a built-in name ({', '.join(BUILTIN_MODELS)}), {SPEC_FORMS}; GET /v1/models lists them."


def _resolve_builtin(spec: BaseModelSpec) -> ResolvedBaseModel:
    model = BUILTIN_MODELS.get(spec.name)
    if model is None:
        raise ValidationFailed(PARAM, f"unknown base model {spec.name!r}. {_SPEC_HELP}")
    path = model.local_path()
    if path is None:
        raise ValidationFailed(
            PARAM, f"built-in model {spec.name!r} is not installed on this server ({model.install_hint})"
        )
    return ResolvedBaseModel(spec=spec, local_path=path)


def _resolve_hub(spec: BaseModelSpec, settings: Settings) -> ResolvedBaseModel:
    if settings.hf_hub_offline:
        raise ValidationFailed(
            PARAM,
            f"{spec} is unavailable: the workers cannot reach the Hugging Face hub (HF_HUB_OFFLINE). "
            "Upload the checkpoint (POST /v1/checkpoints) and use checkpoint:<id> instead.",
        )
    return ResolvedBaseModel(spec=spec)


def _resolve_checkpoint(
    session: Session, tenant: Tenant, spec: BaseModelSpec, storage: Storage
) -> ResolvedBaseModel:
    checkpoint = checkpoints_repository.get(session, tenant.id, spec.name)
    if checkpoint is None:
        raise ValidationFailed(PARAM, f"no checkpoint with id {spec.name!r}")
    local_path = _fetch_files(storage, checkpoint.storage_key, spec)
    return ResolvedBaseModel(spec=spec, local_path=local_path, storage_key=checkpoint.storage_key)


def _resolve_run(
    session: Session, tenant: Tenant, spec: BaseModelSpec, storage: Storage
) -> ResolvedBaseModel:
    run = repository.get_run(session, tenant.id, spec.name)
    if run is None:
        raise ValidationFailed(PARAM, f"no run with id {spec.name!r}")
    if spec.step is None:
        if run.status != RunStatus.SUCCEEDED:
            raise ValidationFailed(
                PARAM,
                f"run {run.id!r} is {run.status.value}: only a succeeded run has a final model (continue "
                "from one of its checkpoints with run:<id>@<step>)",
            )
        key = final_model_key(run)
    else:
        checkpoint = repository.get_run_checkpoint(session, run.id, spec.step)
        if checkpoint is None:
            raise ValidationFailed(PARAM, f"run {run.id!r} has no kept checkpoint at step {spec.step}")
        key = checkpoint.storage_key
    return ResolvedBaseModel(spec=spec, local_path=_fetch_files(storage, key, spec), storage_key=key)


def _fetch_files(storage: Storage, key: str, spec: BaseModelSpec) -> Path:
    """The model's directory on this machine (:meth:`Storage.fetch`: with S3, a copy in the process's
    cache, downloaded once per content)."""
    try:
        return storage.fetch(key)
    except FileNotFoundError:
        raise ValidationFailed(
            PARAM, f"the files of {spec} are missing from storage; ask the operator"
        ) from None


def _builtin_public(model: BuiltinModel) -> BaseModelPublic:
    path = model.local_path()
    summary = _summary(str(path)) if path is not None else None
    return BaseModelPublic(
        id=model.name,
        kind="builtin",
        name=model.name,
        description=model.description
        if path is not None
        else f"{model.description} Not installed: {model.install_hint}.",
        available=summary is not None,
        config=CheckpointConfig.model_validate(summary.config_summary) if summary else None,
        has_pretraining_heads=summary.has_pretraining_heads if summary else None,
        parameters=summary.parameters if summary else None,
    )


@lru_cache(maxsize=16)
def _summary(path: str) -> ModelDirSummary | None:
    """Built-in checkpoints do not change while the process runs: read their headers once."""
    try:
        return inspect_model_dir(Path(path), check_values=False)
    except BaseModelError:
        return None
