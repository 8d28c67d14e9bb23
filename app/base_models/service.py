"""Base models: what a run may start from, listed for clients and resolved for the run submission and
the worker.

A base-model spec is one of
- a built-in name (``minilm-l6-h384-uncased``): a checkpoint shipped as a Python package;
- ``hf:<repo_id>``: a Hugging Face hub repository, fetched by the worker (unavailable when offline);
- ``checkpoint:<id>``: a checkpoint the tenant uploaded;
- ``run:<id>``: the final model of one of the tenant's succeeded runs, or ``run:<id>@<step>`` one of its
  kept intermediate checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.base_models import repository
from app.base_models.registry import BUILTIN_MODELS, BuiltinModel
from app.base_models.schemas import BaseModelPublic
from app.checkpoints import repository as checkpoints_repository
from app.checkpoints.inspect import CheckpointError, CheckpointSummary, inspect_checkpoint_dir
from app.checkpoints.schemas import CheckpointConfig
from app.config import Settings, get_settings
from app.errors import ValidationFailed
from app.models import Run, RunStatus, Tenant
from app.storage import Storage, get_storage

__all__ = [
    "ResolvedBaseModel",
    "final_model_key",
    "list_base_models",
    "resolve_base_model",
    "run_directory_key",
    "run_output_key",
]

PARAM = "base_model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$")
_RUN_SPEC = re.compile(r"^(?P<run_id>[^@\s]+)(?:@(?P<step>\d{1,12}))?$")


@dataclass(frozen=True)
class ResolvedBaseModel:
    """Where a base model's files are. ``spec`` is the normalized spec (store this one on the run);
    ``local_path`` is set for every kind but ``hf``, whose ``hub_id`` the worker downloads."""

    spec: str
    kind: Literal["builtin", "hf", "checkpoint", "run"]
    local_path: Path | None = None
    hub_id: str | None = None
    storage_key: str | None = None  # checkpoint and run kinds: the directory in storage
    checkpoint_id: str | None = None
    run_id: str | None = None
    step: int | None = None

    @property
    def source(self) -> str:
        """What to hand to the training library's loader: a local directory or a hub id."""
        return str(self.local_path) if self.local_path is not None else str(self.hub_id)


def run_directory_key(run_id: str) -> str:
    """The storage directory a run trains into (``checkpoints/checkpoint-<step>/``, ``model/``,
    ``metrics.jsonl``; download archives under ``archives/``); the same for every attempt, so that a
    later attempt resumes from the newest checkpoint."""
    return f"runs/{run_id}"


def run_output_key(run: Run) -> str:
    """The storage directory of a run's training output."""
    return run_directory_key(run.id)


def final_model_key(run: Run) -> str:
    """The final model's directory: recorded by the worker when the run succeeded."""
    return run.output_storage_key or f"{run_output_key(run)}/model"


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
    spec = spec.strip()
    kind, _, value = spec.partition(":")
    if not value:
        return _resolve_builtin(spec)
    if kind == "hf":
        return _resolve_hub(value, settings)
    storage = storage or get_storage(settings)
    if kind == "checkpoint":
        return _resolve_checkpoint(session, tenant, value, storage)
    if kind == "run":
        return _resolve_run(session, tenant, value, storage)
    raise ValidationFailed(PARAM, f"unknown base model {spec!r}. {_SPEC_HELP}")


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
                id=f"checkpoint:{checkpoint.id}",
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
                id=f"run:{run.id}",
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


_SPEC_HELP = (
    "Use a built-in name (" + ", ".join(BUILTIN_MODELS) + "), hf:<repo_id>, checkpoint:<id>, run:<id> or "
    "run:<id>@<step>; GET /v1/models lists them."
)


def _resolve_builtin(name: str) -> ResolvedBaseModel:
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise ValidationFailed(PARAM, f"unknown base model {name!r}. {_SPEC_HELP}")
    path = model.local_path()
    if path is None:
        raise ValidationFailed(
            PARAM, f"built-in model {name!r} is not installed on this server ({model.install_hint})"
        )
    return ResolvedBaseModel(spec=name, kind="builtin", local_path=path)


def _resolve_hub(repo_id: str, settings: Settings) -> ResolvedBaseModel:
    if not _HUB_ID.match(repo_id):
        raise ValidationFailed(PARAM, f"{repo_id!r} is not a Hugging Face repository id (owner/name)")
    if settings.hf_hub_offline:
        raise ValidationFailed(
            PARAM,
            f"hf:{repo_id} is unavailable: the workers cannot reach the Hugging Face hub (HF_HUB_OFFLINE). "
            "Upload the checkpoint (POST /v1/checkpoints) and use checkpoint:<id> instead.",
        )
    return ResolvedBaseModel(spec=f"hf:{repo_id}", kind="hf", hub_id=repo_id)


def _resolve_checkpoint(
    session: Session, tenant: Tenant, checkpoint_id: str, storage: Storage
) -> ResolvedBaseModel:
    checkpoint = checkpoints_repository.get(session, tenant.id, checkpoint_id)
    if checkpoint is None:
        raise ValidationFailed(PARAM, f"no checkpoint with id {checkpoint_id!r}")
    _require_files(storage, checkpoint.storage_key, f"checkpoint:{checkpoint_id}")
    return ResolvedBaseModel(
        spec=f"checkpoint:{checkpoint.id}",
        kind="checkpoint",
        local_path=storage.local_path(checkpoint.storage_key),
        storage_key=checkpoint.storage_key,
        checkpoint_id=checkpoint.id,
    )


def _resolve_run(session: Session, tenant: Tenant, value: str, storage: Storage) -> ResolvedBaseModel:
    match = _RUN_SPEC.match(value)
    if match is None:
        raise ValidationFailed(PARAM, f"run:{value} is not a valid spec; use run:<id> or run:<id>@<step>")
    run_id, step_text = match["run_id"], match["step"]
    run = repository.get_run(session, tenant.id, run_id)
    if run is None:
        raise ValidationFailed(PARAM, f"no run with id {run_id!r}")
    if step_text is None:
        if run.status != RunStatus.SUCCEEDED:
            raise ValidationFailed(
                PARAM,
                f"run {run_id!r} is {run.status.value}: only a succeeded run has a final model (continue "
                "from one of its checkpoints with run:<id>@<step>)",
            )
        key = final_model_key(run)
        spec, step = f"run:{run.id}", None
    else:
        step = int(step_text)
        checkpoint = repository.get_run_checkpoint(session, run.id, step)
        if checkpoint is None:
            raise ValidationFailed(PARAM, f"run {run_id!r} has no kept checkpoint at step {step}")
        key, spec = checkpoint.storage_key, f"run:{run.id}@{step}"
    _require_files(storage, key, spec)
    return ResolvedBaseModel(
        spec=spec, kind="run", local_path=storage.local_path(key), storage_key=key, run_id=run.id, step=step
    )


def _require_files(storage: Storage, key: str, spec: str) -> None:
    if not storage.exists(key):
        raise ValidationFailed(PARAM, f"the files of {spec} are missing from storage; ask the operator")


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
        config=CheckpointConfig.model_validate(summary.config) if summary else None,
        has_pretraining_heads=summary.has_pretraining_heads if summary else None,
        parameters=summary.parameters if summary else None,
    )


@lru_cache(maxsize=16)
def _summary(path: str) -> CheckpointSummary | None:
    """Built-in checkpoints do not change while the process runs: read their headers once."""
    try:
        return inspect_checkpoint_dir(Path(path))
    except CheckpointError:
        return None
