"""API schemas of evaluations, and of a run's ``downstream`` field.

The body of ``POST /v1/evaluations`` and a run's ``downstream`` are the library's
:class:`~worker.evaluation.settings.EvaluationConfig` (method, seeds, hyperparameters: one definition for
the CLI, the API and the worker) plus what names the data and the models; the result is the library's
:class:`~worker.evaluation.results.ComparisonResult` as the worker stored it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.evaluations.states import EvaluationStatus
from app.json_schema import DocumentedAs
from app.models import Evaluation, Run
from worker.evaluation.results import ComparisonResult
from worker.evaluation.settings import EvaluationConfig, EvaluationHyperparameters, EvaluationMethod

__all__ = [
    "MAX_MODELS",
    "DownstreamCreate",
    "EvaluationCreate",
    "EvaluationError",
    "EvaluationModel",
    "EvaluationProgressPublic",
    "EvaluationPublic",
    "EvaluationsPublic",
    "RunDownstreamPublic",
]

MAX_MODELS = 8
ModelSpec = Annotated[str, Field(min_length=1, max_length=300)]
# The hyperparameters an evaluation was made with, as stored (defaults filled in); documented as their model.
StoredHyperparameters = Annotated[dict[str, Any], DocumentedAs(EvaluationHyperparameters)]


class EvaluationCreate(EvaluationConfig):
    """An evaluation: the models compared on the dataset, with the same seeds and splits for each.
    Unknown fields are refused, as are unknown hyperparameters."""

    dataset_id: str = Field(max_length=40, description="The labelled dataset (POST /v1/datasets).")
    models: list[ModelSpec] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description="1 to 8 models, each a built-in model, hf:<repo_id>, checkpoint:<id>, run:<id> (a "
        "succeeded run's final model) or run:<id>@<step> (a kept checkpoint). The first is the baseline of "
        "the paired differences.",
        examples=[["minilm-l6-h384-uncased"]],
    )


class DownstreamCreate(EvaluationConfig):
    """A run's ``downstream``: when the run succeeds, its base model and its final model are compared on
    the dataset (an evaluation of ``[<base_model>, "run:<id>"]``, queued by the worker)."""

    dataset_id: str = Field(max_length=40, description="The labelled dataset (POST /v1/datasets).")


class EvaluationModel(BaseModel):
    """A model of the evaluation as resolved at submission: its normalized spec and its kind."""

    spec: str = Field(examples=["run:run_Jq8sT2vX0bN4mC6zL1pR9wYe"])
    kind: str = Field(examples=["run"], description="builtin, hf, checkpoint or run.")


class EvaluationProgressPublic(BaseModel):
    """How far the evaluation is, in (model, seed) fits; the last one finished."""

    model_config = ConfigDict(extra="ignore")

    done: int | None = Field(None, description="Fits finished.")
    total: int | None = Field(None, description="Fits in all: models x seeds.")
    model: str | None = Field(None, description="The model of the last fit finished.")
    seed: int | None = Field(None, description="Its seed.")


class EvaluationError(BaseModel):
    """Why an evaluation failed: ``type`` (see ``worker/evaluation_process.py``), a ``message`` saying what
    to do, and the details that locate it when there are."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(examples=["dataset_format_error"])
    message: str
    file: str | None = Field(None, description="The dataset's file (dataset_format_error).")
    line: int | None = Field(None, description="Its 1-based line (dataset_format_error).")
    field: str | None = Field(None, description="The column at fault (dataset_format_error).")
    exit_code: int | None = Field(
        None, description="How the evaluation process ended (evaluation_process_died; negative: a signal)."
    )


class EvaluationPublic(BaseModel):
    id: str = Field(examples=["eval_Vn3kE0aZ2sC1mXy8QpLr7tUw"])
    status: EvaluationStatus
    dataset_id: str | None = Field(description="Null once the dataset was deleted after it finished.")
    run_id: str | None = Field(
        description="The run it is the downstream comparison of (its `downstream` field); null otherwise."
    )
    models: list[str] = Field(description="The model specs as given.")
    resolved_models: list[EvaluationModel]
    method: EvaluationMethod
    seeds: int
    hyperparameters: StoredHyperparameters = Field(description="Every hyperparameter, defaults filled in.")
    progress: EvaluationProgressPublic
    result: ComparisonResult | None = Field(
        description="Once succeeded: per model the mean, sd and per-seed values of accuracy and macro-F1 "
        "(fractions), and against the first model the paired difference with its 95% t interval."
    )
    error: EvaluationError | None
    attempt: int = Field(description="How many times a worker has started this evaluation.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_evaluation(cls, evaluation: Evaluation) -> EvaluationPublic:
        return cls(
            id=evaluation.id,
            status=evaluation.status,
            dataset_id=evaluation.dataset_id,
            run_id=evaluation.run_id,
            models=list(evaluation.models),
            resolved_models=[EvaluationModel.model_validate(m) for m in evaluation.resolved_models],
            method=evaluation.method,  # validated on the way in
            seeds=evaluation.seeds,
            hyperparameters=evaluation.hyperparameters,
            progress=EvaluationProgressPublic.model_validate(evaluation.progress or {}),
            result=ComparisonResult.model_validate(evaluation.result) if evaluation.result else None,
            error=EvaluationError.model_validate(evaluation.error) if evaluation.error else None,
            attempt=evaluation.attempt,
            created_at=evaluation.created_at,
            started_at=evaluation.started_at,
            finished_at=evaluation.finished_at,
        )


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class RunDownstreamPublic(BaseModel):
    """A run's ``downstream`` settings and the state of its evaluation (queued by the worker when the run
    succeeds; GET /v1/evaluations/{evaluation_id} has the rest)."""

    dataset_id: str
    method: EvaluationMethod
    seeds: int
    hyperparameters: StoredHyperparameters = Field(description="Every hyperparameter, defaults filled in.")
    evaluation_id: str | None = Field(
        description="Null until the run has succeeded, and again once that evaluation is deleted "
        "(DELETE /v1/evaluations/{evaluation_id}: the settings stay, the comparison is not queued again)."
    )
    status: EvaluationStatus | None = Field(description="The evaluation's; null while there is none.")
    progress: EvaluationProgressPublic | None
    result: ComparisonResult | None = Field(description="The comparison, once the evaluation succeeded.")
    error: EvaluationError | None

    @classmethod
    def from_run(cls, run: Run) -> RunDownstreamPublic | None:
        """The run's downstream field; None when the run has none. Reads the run's evaluation (a query,
        made only for a run with downstream settings)."""
        settings = run.downstream
        if not settings:
            return None
        evaluation = run.downstream_evaluation
        public = EvaluationPublic.from_evaluation(evaluation) if evaluation is not None else None
        return cls(
            dataset_id=settings["dataset_id"],
            method=settings["method"],
            seeds=settings["seeds"],
            hyperparameters=settings.get("hyperparameters") or {},
            evaluation_id=public.id if public else None,
            status=public.status if public else None,
            progress=public.progress if public else None,
            result=public.result if public else None,
            error=public.error if public else None,
        )
