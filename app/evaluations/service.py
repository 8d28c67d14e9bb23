"""Evaluations as the API sees them (submit, list, get, cancel, delete), and the downstream evaluation
of a run: checked at the run's submission, queued by the worker when the run succeeds.

The worker's side is :mod:`app.evaluations.lifecycle`. Services never commit: the task of a new
evaluation is sent once its row is committed (:func:`~app.db.on_commit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.base_models.spec import BaseModelSpec, BaseModelSpecError
from app.config import Settings
from app.db import on_commit
from app.errors import Conflict, NotFound, ValidationFailed
from app.evaluations import repository
from app.evaluations.schemas import DownstreamCreate, EvaluationCreate
from app.evaluations.states import EVALUATION_STATES, EvaluationStatus
from app.ids import new_id
from app.jobs import leases
from app.jobs.states import Trigger
from app.models import Dataset, Evaluation, Run, Tenant
from app.pagination import Page
from app.queue import Enqueuer
from app.storage import Storage
from worker.evaluation.settings import EvaluationConfig

__all__ = [
    "cancel_evaluation",
    "check_downstream",
    "create_evaluation",
    "delete_evaluation",
    "get_evaluation",
    "list_evaluations",
    "queue_downstream_evaluation",
    "resolve_models",
]


def create_evaluation(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant: Tenant,
    body: EvaluationCreate,
    *,
    enqueue: Enqueuer,
) -> Evaluation:
    """Check the dataset (the tenant's) and resolve every model spec as a run's ``base_model`` is resolved
    (ValidationFailed naming ``dataset_id`` or ``models[i]``), insert the queued evaluation, and send its
    task once that is committed."""
    dataset = _dataset(session, tenant, body.dataset_id, "dataset_id")
    resolved = resolve_models(session, storage, settings, tenant, body.models)
    evaluation = _new_evaluation(
        tenant.id,
        dataset.id,
        models=list(body.models),
        resolved=[_described(model.spec) for model in resolved],
        config=body,
    )
    repository.add(session, evaluation)
    _send_after_commit(session, evaluation.id, enqueue)
    return evaluation


def resolve_models(
    session: Session, storage: Storage, settings: Settings, tenant: Tenant, specs: Sequence[str]
) -> list[ResolvedBaseModel]:
    """Each spec resolved for ``tenant`` (:func:`~app.base_models.service.resolve_base_model`); a spec
    that names nothing usable, or a model named twice, is a ValidationFailed naming ``models[i]``."""
    resolved: list[ResolvedBaseModel] = []
    for index, spec in enumerate(specs):
        param = f"models[{index}]"
        try:
            model = resolve_base_model(session, tenant, spec, settings=settings, storage=storage)
        except ValidationFailed as exc:
            raise ValidationFailed(param, exc.message) from None
        earlier = [str(other.spec) for other in resolved]
        if str(model.spec) in earlier:
            raise ValidationFailed(
                param,
                f"{model.spec} is models[{earlier.index(str(model.spec))}] already; compare each model once",
            )
        resolved.append(model)
    return resolved


def get_evaluation(
    session: Session, tenant: Tenant, evaluation_id: str, *, for_update: bool = False
) -> Evaluation:
    evaluation = repository.get(session, tenant.id, evaluation_id, for_update=for_update)
    if evaluation is None:
        raise NotFound("evaluation", evaluation_id)
    return evaluation


def list_evaluations(session: Session, tenant: Tenant, *, limit: int, after: str | None) -> Page[Evaluation]:
    return repository.page(session, tenant.id, limit=limit, after=after)


def cancel_evaluation(session: Session, tenant: Tenant, evaluation_id: str) -> Evaluation:
    """Cancel an evaluation; idempotent. Its ``cancel`` transition: a queued one is cancelled at once (the
    claim only takes queued ones, and waits on this row lock); a running one becomes ``cancelling`` until
    its worker has stopped it (after the fit in progress: within a training step or a probe fit); one the
    trigger does not move (cancelling already, or finished) is returned as is."""
    evaluation = get_evaluation(session, tenant, evaluation_id, for_update=True)
    step = EVALUATION_STATES.transition(evaluation.status, Trigger.CANCEL)
    if step is None:
        return evaluation
    leases.set_status(session, evaluation, EVALUATION_STATES, step.target)  # ended: its webhook events
    session.flush()
    return evaluation


def delete_evaluation(session: Session, tenant: Tenant, evaluation_id: str) -> None:
    """Delete a finished evaluation (its result goes with it; a run it was the downstream comparison of
    keeps its settings). Conflict while it is not finished."""
    evaluation = get_evaluation(session, tenant, evaluation_id, for_update=True)
    if not evaluation.status.is_terminal:
        raise Conflict(
            f"evaluation {evaluation.id!r} is {evaluation.status.value}; only a finished evaluation can be "
            f"deleted (cancel it first: POST /v1/evaluations/{evaluation.id}/cancel)"
        )
    repository.delete(session, evaluation)


# -- a run's downstream evaluation ---------------------------------------------------------------------------


def check_downstream(session: Session, tenant: Tenant, downstream: DownstreamCreate) -> dict[str, Any]:
    """A run body's ``downstream``, checked (the dataset is the tenant's: ValidationFailed naming
    ``downstream.dataset_id``; the settings were validated with the body), as the run stores it."""
    _dataset(session, tenant, downstream.dataset_id, "downstream.dataset_id")
    return downstream.model_dump(mode="json")


def queue_downstream_evaluation(session: Session, run_id: str, *, enqueue: Enqueuer) -> Evaluation | None:
    """For a run that has just succeeded (in the transaction that records it): the evaluation of its
    ``downstream`` settings, comparing its base model with its final model (``[<base_model>,
    "run:<id>"]``), queued and sent once committed. None for a run without downstream settings; the
    existing one when it was queued already. A dataset deleted meanwhile (an active run's dataset cannot
    be) gives an evaluation failed at once, so that the run's JSON says why there is no comparison."""
    run = session.get(Run, run_id)
    if run is None or not run.downstream:
        return None
    existing = repository.for_run(session, run.id)
    if existing is not None:
        return existing
    settings = DownstreamCreate.model_validate(run.downstream)
    dataset = repository.dataset_for_evaluation(session, run.tenant_id, settings.dataset_id)
    final_model = BaseModelSpec.run(run.id)
    evaluation = _new_evaluation(
        run.tenant_id,
        dataset.id if dataset is not None else None,
        models=[run.base_model, str(final_model)],
        resolved=[_described(_parsed(run.base_model)), _described(final_model)],
        config=settings,
        run_id=run.id,
    )
    if dataset is None:
        evaluation.error = {
            "type": "input_error",
            "message": f"the dataset {settings.dataset_id} was deleted before the run ended",
        }
    repository.add(session, evaluation)
    if dataset is None:  # failed from the start: its webhook events with it
        leases.set_status(session, evaluation, EVALUATION_STATES, EvaluationStatus.FAILED)
    if not evaluation.status.is_terminal:
        _send_after_commit(session, evaluation.id, enqueue)
    return evaluation


# -- helpers -------------------------------------------------------------------------------------------------


def _dataset(session: Session, tenant: Tenant, dataset_id: str, param: str) -> Dataset:
    """A dataset named in a body; another tenant's answers like a missing one (422 naming the field)."""
    dataset = repository.dataset_for_evaluation(session, tenant.id, dataset_id)
    if dataset is None:
        raise ValidationFailed(
            param, f"no dataset with id {dataset_id!r}; upload it first (POST /v1/datasets)"
        )
    return dataset


def _new_evaluation(
    tenant_id: str,
    dataset_id: str | None,
    *,
    models: list[str],
    resolved: list[dict[str, str]],
    config: EvaluationConfig,
    run_id: str | None = None,
) -> Evaluation:
    return Evaluation(
        id=new_id("eval"),
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        run_id=run_id,
        models=models,
        resolved_models=resolved,
        method=config.method,
        seeds=config.seeds,
        hyperparameters=config.hyperparameters.model_dump(mode="json"),
        status=EvaluationStatus.QUEUED,
        progress={},
    )


def _parsed(spec: str) -> BaseModelSpec:
    """A spec stored by a run (normalized at its submission); one that no longer parses is kept as given."""
    try:
        return BaseModelSpec.parse(spec)
    except BaseModelSpecError:
        return BaseModelSpec("builtin", spec)


def _described(spec: BaseModelSpec) -> dict[str, str]:
    return {"spec": str(spec), "kind": spec.kind}


def _send_after_commit(session: Session, evaluation_id: str, enqueue: Enqueuer) -> None:
    def send() -> None:
        enqueue(evaluation_id)

    on_commit(session, send)
