"""Evaluations: submit, list, get, cancel, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from app.api.deps import CurrentTenant, EvaluationEnqueuerDep, SessionDep, SettingsDep, StorageDep
from app.api.schemas import PageAfter, PageLimit, error_responses, id_path, json_response
from app.evaluations import service
from app.evaluations.schemas import EvaluationCreate, EvaluationPublic, EvaluationsPublic
from app.pagination import DEFAULT_LIMIT

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body (FastAPI
# would document its own body for it).
router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=error_responses(401, 422))

EvaluationId = Annotated[str, id_path("The evaluation's id (eval_...).")]


@router.post(
    "",
    response_model=EvaluationPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Compare models on a labelled dataset",
    description="Queues a downstream comparison of 1 to 8 models on one of your datasets: `finetune` "
    "(BertForSequenceClassification fine-tuned per model per seed) or `probe` (a cross-validated logistic "
    "regression on frozen mean-pooled features), with the same seeds and splits for every model. Checked "
    "before it is queued: the dataset (yours; 422 `dataset_id`), each model spec, resolved as a run's "
    "`base_model` is (422 `models[i]`), method, seeds and hyperparameters (unknown names are refused). 202 "
    "with the queued evaluation; follow it with GET /v1/evaluations/{id}.",
    responses=error_responses(400),
)
def create_evaluation(
    body: EvaluationCreate,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    enqueue: EvaluationEnqueuerDep,
) -> EvaluationPublic:
    evaluation = service.create_evaluation(session, storage, settings, tenant, body, enqueue=enqueue)
    response.headers["Location"] = f"/v1/evaluations/{evaluation.id}"
    return EvaluationPublic.from_evaluation(evaluation)


@router.get(
    "",
    response_model=EvaluationsPublic,
    summary="List evaluations, newest first",
    responses=error_responses(422),
)
def list_evaluations(
    session: SessionDep, tenant: CurrentTenant, limit: PageLimit = DEFAULT_LIMIT, after: PageAfter = ""
) -> Response:
    page = service.list_evaluations(session, tenant, limit=limit, after=after)
    data = [EvaluationPublic.from_evaluation(evaluation) for evaluation in page.items]
    return json_response(EvaluationsPublic(data=data, next_cursor=page.next_cursor))


@router.get(
    "/{evaluation_id}",
    response_model=EvaluationPublic,
    summary="Get an evaluation",
    description="Its status, progress (fits done of models x seeds), and once succeeded the result: per "
    "model the mean, sd and per-seed accuracy and macro-F1, and against the first model the paired "
    "difference with its 95% interval; or the error.",
    responses=error_responses(404),
)
def get_evaluation(evaluation_id: EvaluationId, session: SessionDep, tenant: CurrentTenant) -> Response:
    return json_response(
        EvaluationPublic.from_evaluation(service.get_evaluation(session, tenant, evaluation_id))
    )


@router.post(
    "/{evaluation_id}/cancel",
    response_model=EvaluationPublic,
    summary="Cancel an evaluation",
    description="Idempotent. A queued evaluation is cancelled at once; a running one becomes `cancelling` "
    "and stops within its current fit; a finished one is returned unchanged.",
    responses=error_responses(404),
)
def cancel_evaluation(
    evaluation_id: EvaluationId, session: SessionDep, tenant: CurrentTenant
) -> EvaluationPublic:
    return EvaluationPublic.from_evaluation(service.cancel_evaluation(session, tenant, evaluation_id))


@router.delete(
    "/{evaluation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished evaluation",
    description="Only succeeded, failed or cancelled evaluations (409 otherwise). A run's downstream "
    "evaluation can be deleted too: the run keeps its `downstream` settings, with `evaluation_id` null.",
    responses=error_responses(404, 409),
)
def delete_evaluation(evaluation_id: EvaluationId, session: SessionDep, tenant: CurrentTenant) -> None:
    service.delete_evaluation(session, tenant, evaluation_id)
