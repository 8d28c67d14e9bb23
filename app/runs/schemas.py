"""API schemas of runs: submission, the run, its metrics, events and checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.config import ResourceClass, Settings
from app.evaluations.schemas import DownstreamCreate, RunDownstreamPublic
from app.json_schema import DocumentedAs
from app.models import Run
from app.runs.states import RunStatus
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.records import SelectedCheckpoint, StoppedEarly, VocabularyExtension

__all__ = [
    "OUTCOME_KEYS",
    "HyperparameterValues",
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
    "RunResources",
    "RunsPublic",
]

MetricSplit = Literal["train", "eval", "reference"]
# What a succeeded run's worker writes into its ``progress`` JSON beside RunProgress (see RunPublic).
OUTCOME_KEYS = ("selected_checkpoint", "stopped_early", "vocabulary")
# A run's hyperparameters as requests and responses carry them: a JSON object, documented (/openapi.json) as
# the Hyperparameters schema of worker/pretraining/hyperparameters.py, and validated by the submission
# (load_hyperparameters: its messages name the field, defaults are filled in), not at the edge.
HyperparameterValues = Annotated[dict[str, Any], DocumentedAs(Hyperparameters)]


class RunResources(BaseModel):
    """What a run asks of the worker that trains it: a resource class (its task goes to that class's queue,
    ``TRAINING_QUEUE.<class>``, and only a worker consuming it takes the run) and a number of devices."""

    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    resource_class: ResourceClass = Field(
        alias="class",
        description="cpu or gpu: which workers may take the run (those of the queue TRAINING_QUEUE.<class>, "
        "`bertpt worker --queues training.gpu --gpus 0`).",
    )
    devices: int = Field(1, ge=1, le=64, description="Devices the run trains on (GPUs, or CPU processes).")

    @classmethod
    def of(cls, run: Run, settings: Settings) -> RunResources:
        """What ``run`` asked for, as stored; a run submitted before resource classes existed: the default
        class (DEFAULT_RESOURCE_CLASS), one device."""
        if run.resources:
            return cls.model_validate(run.resources)
        return cls(resource_class=settings.default_resource_class)

    def queue(self, settings: Settings) -> str:
        """The queue of the run's task: ``TRAINING_QUEUE.<class>``."""
        return settings.training_queue_for(self.resource_class)


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
    replay_corpus_id: str | None = Field(
        None,
        max_length=40,
        description="General-domain text replayed against forgetting: hyperparameters.replay_ratio of every "
        "epoch's training instances come from it (required with replay_ratio above 0, refused with 0). It "
        "may be the reference corpus: its held-out part is then evaluated and only the rest replayed.",
    )
    hyperparameters: HyperparameterValues = Field(
        default_factory=dict,
        description="Hyperparameters by name; omitted ones take their defaults (echoed back on the run). "
        "Unknown names are refused, as are values out of range and settings that another one makes "
        "ignored (422, param hyperparameters.<name>).",
        examples=[{"max_steps": 1000, "learning_rate": 3e-5}],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Any JSON object of yours (at most 16 KiB), returned unchanged."
    )
    downstream: DownstreamCreate | None = Field(
        None,
        description="Did it help? When the run succeeds, its base model and its final model are compared on "
        "this labelled dataset (an evaluation, queued by the worker: see the run's `downstream` field).",
        examples=[{"dataset_id": "ds_Vn3kE0aZ2sC1mXy8QpLr7tUw", "method": "finetune", "seeds": 5}],
    )
    resources: RunResources | None = Field(
        None,
        description="The resource class the run needs and its devices (default: DEFAULT_RESOURCE_CLASS, one "
        "device). It waits in its class's queue until a worker of that queue takes it; while no live worker "
        "serves the queue, the run says so (`waiting_reason`).",
        examples=[{"class": "gpu", "devices": 1}],
    )


class RunProgress(BaseModel):
    """How far a run is: written by its worker (the runs row, the live stream), read by clients."""

    model_config = ConfigDict(extra="ignore")

    step: int | None = Field(None, description="Optimizer steps done.")
    total_steps: int | None = None
    epoch: float | None = None
    tokens_seen: int | None = Field(None, description="Real (non-padding) tokens trained on.")
    tokens_per_second: float | None = Field(None, description="Of the last logged training window.")
    samples_per_second: float | None = Field(
        None, description="Sequences trained on per second, of the last logged training window."
    )
    mfu: float | None = Field(
        None,
        description="Model FLOPs utilization of the last logged training window, a share in [0, 1]: useful "
        "training FLOP/s over the GPU's dense peak; null on a CPU or a GPU without a known peak.",
    )
    eta_seconds: float | None = Field(
        None,
        description="Remaining optimizer steps x this attempt's wall-clock seconds per step since its first "
        "progress (evaluation pauses and checkpoints so far included, pro rata); the evaluations, "
        "checkpoints and export still to come are not added. 0 once it succeeded.",
    )
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
    replay_corpus_id: str | None = Field(
        description="The corpus replayed against forgetting (replay_ratio); null without replay, or once it "
        "was deleted after the run finished."
    )
    hyperparameters: HyperparameterValues = Field(description="Every hyperparameter, defaults filled in.")
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
    selected_checkpoint: SelectedCheckpoint | None = Field(
        None,
        description="Which step's weights the run's model holds, and why (select_checkpoint, "
        "max_reference_loss_increase); null until the run succeeds. The other kept checkpoints stay "
        "downloadable (GET /v1/runs/{id}/checkpoints).",
    )
    stopped_early: StoppedEarly | None = Field(
        None, description="Why early_stopping_patience ended the run before max_steps; null otherwise."
    )
    vocabulary: VocabularyExtension | None = Field(
        None,
        description="What add_domain_tokens did: the words made tokens (with their counts, pieces and "
        "embedding rows) and the corpus's unk_rate and wordpieces_per_word before and after; null until the "
        "run succeeds, and without add_domain_tokens (the training_started event carries it from the start).",
    )
    downstream: RunDownstreamPublic | None = Field(
        None,
        description="The downstream settings of its submission and the state of their evaluation "
        "(comparing its base model with its final model); null without downstream settings.",
    )
    resources: RunResources | None = Field(
        None, description="What it asked for, the default filled in (echoed from its submission)."
    )
    queue: str | None = Field(
        None,
        description="The Celery queue its task is sent to: TRAINING_QUEUE.<resources.class>.",
        examples=["training.gpu"],
    )
    waiting_reason: str | None = Field(
        None,
        description="Why a queued run is not taken: no live worker serves its queue (or none has the devices "
        "it asks for), with the command that starts one; null otherwise, and while that is not known (the "
        "workers' announcements cannot be read). A `waiting_for_worker` event records it once.",
        examples=[
            "no worker serves training.gpu; start one with `bertpt worker --queues training.gpu --gpus 0`"
        ],
    )
    eta_seconds: float | None = Field(
        None,
        description="Seconds until the run is expected to end. Queued: the wait for a worker (the runs ahead "
        "of it) plus its own estimate (as POST /v1/runs/estimate gives it); preparing: its own estimate less "
        "the time spent (both: startup, training, evaluations and export); running: progress.eta_seconds, "
        "its remaining steps at this attempt's measured wall-clock seconds per step (the evaluations so far "
        "spread over the steps; the final evaluation and export are not added, so it may end later); null "
        "once it has ended, while it is being cancelled, or when it cannot be estimated.",
    )

    @classmethod
    def from_run(
        cls,
        run: Run,
        *,
        settings: Settings | None = None,
        eta_seconds: float | None = None,
        waiting_reason: str | None = None,
    ) -> RunPublic:
        """The run as the API serves it; ``eta_seconds`` of a queued or preparing run is the caller's to
        give (:func:`app.estimates.service.run_etas`), a running run's is its progress's, and so is the
        ``waiting_reason`` of a queued run (:func:`app.runs.routing.waiting_reasons`). With ``settings``,
        its ``resources`` (the default filled in) and ``queue``."""
        resources = RunResources.of(run, settings) if settings is not None else None
        pace = (run.progress or {}).get("eta_seconds")
        if run.status == RunStatus.RUNNING and isinstance(pace, (int, float)):
            eta_seconds = float(pace)
        elif run.status not in (RunStatus.QUEUED, RunStatus.PREPARING):
            eta_seconds = None
        return cls(
            eta_seconds=eta_seconds,
            resources=resources,
            queue=resources.queue(settings) if resources is not None and settings is not None else None,
            waiting_reason=waiting_reason if run.status == RunStatus.QUEUED else None,
            id=run.id,
            name=run.name,
            status=run.status,
            base_model=run.base_model,
            corpus_id=run.corpus_id,
            eval_corpus_id=run.eval_corpus_id,
            reference_corpus_id=run.reference_corpus_id,
            replay_corpus_id=run.replay_corpus_id,
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
            **_outcome(run.progress or {}),
            downstream=RunDownstreamPublic.from_run(run),
        )


def _outcome(progress: dict[str, Any]) -> dict[str, Any]:
    """``selected_checkpoint``, ``stopped_early`` and ``vocabulary`` of a succeeded run: its worker keeps
    them in the ``progress`` JSON column (beside what RunProgress shows; no column of their own)."""
    selected, stopped = progress.get(OUTCOME_KEYS[0]), progress.get(OUTCOME_KEYS[1])
    vocabulary = progress.get(OUTCOME_KEYS[2])  # add_domain_tokens's report
    return {
        "selected_checkpoint": SelectedCheckpoint.model_validate(selected) if selected else None,
        "stopped_early": StoppedEarly.model_validate(stopped) if stopped else None,
        "vocabulary": VocabularyExtension.model_validate(vocabulary) if vocabulary else None,
    }


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
