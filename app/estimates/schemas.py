"""API schemas of estimates: a corpus analysis and the estimate of a run. Every figure's unit is in its
name (``*_seconds``, ``tokens_per_second``) or its description: tokens are wordpieces, instances and
sequences are the model's inputs, steps are optimizer steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import Analysis, AnalysisStatus
from app.runs.schemas import HyperparameterValues
from worker.pretraining.estimates import CorpusAnalysis
from worker.pretraining.hyperparameters import Hyperparameters

__all__ = [
    "AnalysisError",
    "AnalysisPublic",
    "AnalyzeRequest",
    "QueueAhead",
    "RunEstimate",
    "Throughput",
]


class AnalyzeRequest(BaseModel):
    """What to analyse a corpus with: the base model (its tokenizer) and the run's hyperparameters (their
    preparation settings, and the batch and duration settings for the steps). Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        min_length=1,
        max_length=300,
        description="A built-in model, hf:<repo_id>, checkpoint:<id>, run:<id> or run:<id>@<step>, as for a "
        "run; its tokenizer is used.",
        examples=["minilm-l6-h384-uncased"],
    )
    hyperparameters: HyperparameterValues = Field(
        default_factory=dict,
        description="Hyperparameters by name, as for a run (omitted ones take their defaults).",
        examples=[{"max_seq_length": 128, "num_epochs": 1}],
    )


class AnalysisError(BaseModel):
    """Why an analysis failed: ``type`` (``corpus_format_error``, ``data_preparation_error``,
    ``base_model_error``, ``hyperparameter_error``, ``input_error``, ``analysis_process_died``,
    ``internal_error``, ``attempts_exhausted``: its last allowed attempt stopped answering) and a ``message``
    saying what to do."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(examples=["data_preparation_error"])
    message: str
    line: int | None = Field(None, description="The corpus line at fault (corpus_format_error).")
    code: str | None = Field(None, description="The kind of corpus problem (corpus_format_error).")


class AnalysisPublic(BaseModel):
    """A corpus analysed with a tokenizer and preparation settings. ``analysis`` is set once it succeeded;
    its ``steps`` are those of the hyperparameters of the request that answers (or, for GET, of the
    request that created it)."""

    id: str = Field(examples=["ana_Jq8sT2vX0bN4mC6zL1pR9wYe"])
    corpus_id: str
    base_model: str = Field(
        description="The base model whose tokenizer was used (any base model with the same tokenizer files "
        "shares the analysis)."
    )
    status: AnalysisStatus = Field(description="queued, running, succeeded or failed.")
    preparation: dict[str, Any] = Field(description="The preparation settings analysed with.")
    analysis: CorpusAnalysis | None = Field(description="The figures, once it succeeded.")
    error: AnalysisError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Analysis, analysis: CorpusAnalysis | None) -> AnalysisPublic:
        return cls(
            id=row.id,
            corpus_id=row.corpus_id,
            base_model=row.base_model,
            status=row.status,
            preparation=Hyperparameters.model_validate(row.hyperparameters)
            .preparation()
            .model_dump(mode="json"),
            analysis=analysis,
            error=AnalysisError.model_validate(row.error) if row.error else None,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class Throughput(BaseModel):
    """The training speed the estimate assumes."""

    tokens_per_second: float = Field(description="Real (non-padding) wordpieces trained on per second.")
    source: Literal["measured", "scaled", "default"] = Field(
        description="measured: the median of the training metrics' tokens_per_second of recent runs of the "
        "same model size and max_seq_length on this device; scaled: measured on other model sizes or "
        "lengths of this device, scaled by their FLOPs per token; default: no run measured on this device "
        "yet (docs/operations.md, Estimates)."
    )
    runs: int = Field(description="Earlier runs the figure comes from (0: the default).")
    device: Literal["cpu", "cuda"] = Field(
        description="The worker class: that of the most recent run that started (cpu before any)."
    )
    model: str = Field(description="The model size, <layers>x<hidden size>.", examples=["6x384"])
    max_seq_length: int


class QueueAhead(BaseModel):
    """What is ahead of the run on the training queue (every tenant's runs share the workers)."""

    runs: int = Field(description="Runs being prepared, trained or queued before it.")
    wait_seconds: float = Field(description="Seconds until a worker is expected to take it.")
    workers: int = Field(description="Training slots assumed: those the live workers announced.")
    workers_known: bool = Field(
        description="true: the workers announced themselves; false: none did (housekeeping off), one slot "
        "per run in progress (at least one) is assumed."
    )


class RunEstimate(BaseModel):
    """What a run would cost if submitted now. Nothing is stored or queued."""

    exact: bool = Field(
        description="true: instances and tokens from a corpus analysis of this corpus with this tokenizer "
        "and these preparation settings (POST /v1/corpora/{id}/analyze); false: approximated from the "
        "corpus's character and document counts, as always with add_domain_tokens (an analysis uses the base "
        "tokenizer without the domain tokens the run would add) or with an eval corpus."
    )
    analysis_id: str | None = Field(description="The analysis the figures come from, when exact.")
    train_instances: int = Field(description="Sequences of one epoch (replayed ones included).")
    steps_per_epoch: int = Field(description="Optimizer steps of one epoch.")
    epochs: float = Field(description="Passes over the training instances.")
    steps: int = Field(description="Optimizer steps of the run.")
    tokens_per_step: float = Field(description="Real wordpieces an optimizer step trains on.")
    tokens: int = Field(description="Real wordpieces the run trains on.")
    evaluations: int = Field(description="Evaluation passes: step 0, every eval_every_steps, the end.")
    evaluation_tokens: int = Field(description="Wordpieces of one evaluation pass (all its splits).")
    throughput: Throughput
    seconds_per_step: float = Field(description="tokens_per_step / throughput.tokens_per_second.")
    training_seconds: float = Field(description="steps x seconds_per_step.")
    evaluation_seconds: float = Field(
        description="evaluations x evaluation_tokens, forward only (three times the training throughput)."
    )
    startup_seconds: float = Field(
        description="Seconds neither training nor evaluating: process start, model load, data preparation, "
        "checkpoints and export."
    )
    startup_source: Literal["measured", "default"] = Field(
        description="measured: the median over recent runs on this device (their whole time less their "
        "training and evaluation); default: a fixed figure plus the preparation of the corpus."
    )
    total_seconds: float = Field(
        description="The run's own time, from a worker taking it to its end: startup + training + evaluation."
    )
    queue: QueueAhead
    eta_seconds: float = Field(description="queue.wait_seconds + total_seconds: from now to the run's end.")
