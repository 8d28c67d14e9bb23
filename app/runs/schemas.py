"""API schemas of runs: submission, the run, its metrics, events and checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import Run
from app.runs.states import RunStatus

__all__ = [
    "MetricSeries",
    "MetricSplit",
    "MetricsPublic",
    "RunCheckpointPublic",
    "RunCreate",
    "RunError",
    "RunEventPublic",
    "RunEventsPublic",
    "RunLatest",
    "RunProgress",
    "RunPublic",
    "RunsPublic",
]

MetricSplit = Literal["train", "eval", "reference"]


class RunCreate(BaseModel):
    """A run submission. Unknown fields are refused, as are unknown hyperparameters."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, min_length=1, max_length=200, description="Display name (default: base model and corpus)."
    )
    base_model: str = Field(
        min_length=1,
        max_length=300,
        description="A built-in model, hf:<repo_id>, checkpoint:<id>, run:<id> or run:<id>@<step>; see "
        "GET /v1/models.",
        examples=["minilm-l6-h384-uncased"],
    )
    corpus_id: str = Field(max_length=40, description="The training corpus.")
    eval_corpus_id: str | None = Field(
        None,
        max_length=40,
        description="A separate in-domain evaluation corpus (default: held-out documents).",
    )
    reference_corpus_id: str | None = Field(
        None,
        max_length=40,
        description="General-domain text evaluated before and after training, to measure forgetting.",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Hyperparameters by name; omitted ones take their defaults (echoed back on the run).",
        examples=[{"max_steps": 1000, "learning_rate": 3e-5}],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Any JSON object of yours (at most 16 KiB), returned unchanged."
    )


class RunProgress(BaseModel):
    """How far a run is: written by its worker (the runs row, the live stream), read by clients."""

    model_config = ConfigDict(extra="ignore")

    step: int | None = Field(None, description="Optimizer steps done.")
    total_steps: int | None = None
    epoch: float | None = None
    tokens_seen: int | None = Field(None, description="Real (non-padding) tokens trained on.")
    tokens_per_second: float | None = Field(None, description="Of the last logged training window.")
    eta_seconds: float | None = Field(None, description="From this attempt's pace; 0 once it succeeded.")
    skipped_steps: int | None = Field(
        None, description="Optimizer steps not applied because their loss or gradient was not finite."
    )


class RunLatest(BaseModel):
    """The most recent metrics: ``train`` (last logged training step), ``eval`` (last evaluation)."""

    model_config = ConfigDict(extra="allow")

    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None


class RunError(BaseModel):
    """Why a run failed: ``type`` (see ``worker/failures.py``), a ``message`` saying what to do, and the
    details that locate it when there are (null otherwise)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(examples=["non_finite_loss"])
    message: str
    step: int | None = Field(None, description="The optimizer step it happened at (non_finite_*).")
    corpus_id: str | None = Field(None, description="The corpus that cannot be read (corpus_format_error).")
    line: int | None = Field(None, description="Its 1-based line (corpus_format_error).")
    code: str | None = Field(None, description="The kind of corpus problem (corpus_format_error).")
    exit_code: int | None = Field(
        None, description="How the training process ended (training_process_died; negative: a signal)."
    )
    checkpoint_step: int | None = Field(
        None,
        description="The newest checkpoint kept when the run's last attempt was interrupted "
        "(training_process_died, out_of_memory, worker_lost): POST /v1/runs/{id}/resume continues from it.",
    )


class RunPublic(BaseModel):
    id: str = Field(examples=["run_Jq8sT2vX0bN4mC6zL1pR9wYe"])
    name: str
    status: RunStatus
    base_model: str
    corpus_id: str | None = Field(description="Null once the corpus was deleted after the run finished.")
    eval_corpus_id: str | None
    reference_corpus_id: str | None
    hyperparameters: dict[str, Any] = Field(description="Every hyperparameter, defaults filled in.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: RunProgress
    latest: RunLatest
    baseline: dict[str, Any] = Field(description="Evaluation metrics of the base model, before training.")
    warnings: list[dict[str, Any]]
    error: RunError | None
    metadata: dict[str, Any]
    attempt: int = Field(description="How many times a worker has started this run.")
    cancel_requested: bool

    @classmethod
    def from_run(cls, run: Run) -> RunPublic:
        return cls(
            id=run.id,
            name=run.name,
            status=run.status,
            base_model=run.base_model,
            corpus_id=run.corpus_id,
            eval_corpus_id=run.eval_corpus_id,
            reference_corpus_id=run.reference_corpus_id,
            hyperparameters=run.hyperparameters,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            progress=RunProgress.model_validate(run.progress or {}),
            latest=RunLatest.model_validate(run.latest or {}),
            baseline=run.baseline or {},
            warnings=run.warnings or [],
            error=RunError.model_validate(run.error) if run.error else None,
            metadata=run.metadata_ or {},
            attempt=run.attempt,
            cancel_requested=run.cancel_requested,
        )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class MetricSeries(BaseModel):
    name: str = Field(examples=["loss"])
    split: str = Field(examples=["train"])
    points: list[tuple[int, float | None]] = Field(
        description="[step, value] pairs, steps ascending.", examples=[[[10, 7.9], [20, 7.1]]]
    )


class MetricsPublic(BaseModel):
    series: list[MetricSeries]


class RunEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    level: str = Field(examples=["info"])
    type: str = Field(examples=["training_started"])
    message: str
    data: dict[str, Any]


class RunEventsPublic(BaseModel):
    data: list[RunEventPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class RunCheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    created_at: datetime
    metrics: dict[str, Any]
    size_bytes: int
    sha256: str = Field(description="Digest of the checkpoint's files as the worker recorded them.")
