"""What a training run reports, as types: the one vocabulary from the training library to the service.

``run_pretraining`` hands every record to one sink (a plain callable, see :mod:`worker.pretraining.sinks`):

- :class:`MetricsRecord`: the metrics of one split at one step; ``train`` carries :class:`TrainMetrics`
  every ``logging_every_steps``, ``eval`` and ``reference`` carry :class:`EvalMetrics` at every evaluation;
- the events :class:`TrainingStarted`, :class:`CheckpointSaved`, :class:`TrainingFinished` and
  :class:`TrainingFailed`;
- :class:`Progress` (every optimizer step) and :class:`LogLine` (what a person would like to read);

and returns a :class:`TrainingResult`. The service passes these very objects on (they pickle): from the
training process to its supervisor, into SQL rows and onto the live stream, so a field added here reaches
every hop, and a new record type is a case the supervisor's ``match`` must handle (``assert_never``
makes the type checker say so).

Metric names are BERT's (google-research/bert's ``run_pretraining.py``): ``masked_lm_*`` and
``next_sentence_*``, on every split. This module imports pydantic only: the API reads these types too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    computed_field,
    field_validator,
    model_validator,
)

__all__ = [
    "LEGACY_METRIC_NAMES",
    "AddedToken",
    "CheckpointSaved",
    "EvalMetrics",
    "EvalSplit",
    "LogLine",
    "MetricSplit",
    "MetricsRecord",
    "ModelManifest",
    "ModelShape",
    "PreparedDataSummary",
    "Progress",
    "ReplaySummary",
    "RunWarning",
    "SelectedCheckpoint",
    "SplitSummary",
    "StepSkipped",
    "StoppedEarly",
    "TokenizationStats",
    "TrainMetrics",
    "TrainingEvent",
    "TrainingFailed",
    "TrainingFinished",
    "TrainingOutcome",
    "TrainingRecord",
    "TrainingResult",
    "TrainingStarted",
    "TrainingStatus",
    "VocabularyExtension",
    "non_finite_flags",
    "parse_record",
]

MetricSplit = Literal["train", "eval", "reference"]
EvalSplit = Literal["eval", "reference"]
# How a training ended: all of its steps, stopped by should_stop() (a cancel), or by max_runtime_seconds.
TrainingStatus = Literal["completed", "cancelled", "timed_out"]

# The names bertpt used before it took BERT's (CHANGELOG 0.2.0); files and rows written then are read
# with the new names.
LEGACY_METRIC_NAMES = {
    "mlm_loss": "masked_lm_loss",
    "mlm_accuracy": "masked_lm_accuracy",
    "nsp_loss": "next_sentence_loss",
    "nsp_accuracy": "next_sentence_accuracy",
}


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def json_object(self, **options: Any) -> dict[str, Any]:
        """The record as the JSON object it is written as (non-finite numbers as ``null``, flagged where
        they are metrics); ``options`` as for ``model_dump_json`` (``exclude_none=True``, ...)."""
        result: dict[str, Any] = json.loads(self.model_dump_json(**options))
        return result


# --------------------------------------------------------------------------------------------------
# Metrics


def non_finite_flags(values: Mapping[str, Any]) -> dict[str, str]:
    """``{name: "nan" | "inf" | "-inf"}`` for the float values that are not finite: what JSON, which has
    no such numbers, carries beside the ``null`` that stands for them."""
    return {
        name: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        for name, value in values.items()
        if isinstance(value, float) and not math.isfinite(value)
    }


class _Metrics(_Record):
    """Metrics written as JSON carry ``non_finite``: ``{name: "nan" | "inf" | "-inf"}`` for each value
    written as ``null`` because it was not finite; read back, the value is restored."""

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        if isinstance(data, dict):
            values = {LEGACY_METRIC_NAMES.get(name, name): value for name, value in data.items()}
            values.pop("step", None)  # bertpt 0.1 repeated the step among the metrics
            for name, kind in (values.pop("non_finite", None) or {}).items():
                values[name] = float(kind)
            return values
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def non_finite(self) -> dict[str, str]:
        return non_finite_flags(dict(self))

    def values(self) -> dict[str, float]:
        """The metrics that have a value, by name (what becomes a point of a curve; not always finite)."""
        return {name: value for name, value in self if value is not None}


class TrainMetrics(_Metrics):
    """A training window (the steps since the previous logging step). Losses are token-weighted means over
    the window's applied steps (masked-LM over predicted tokens, NSP over sequences); ``loss`` is their
    sum, NaN when every step of the window was skipped (see ``skipped_steps``)."""

    loss: float
    masked_lm_loss: float | None = None  # None: no token was predicted in the window
    masked_lm_accuracy: float | None = None
    next_sentence_loss: float | None = None  # None: the run does not train NSP
    next_sentence_accuracy: float | None = None
    learning_rate: float
    grad_norm: float | None = None  # None: Trainer did not report it (no clipping step yet)
    tokens_per_second: float  # real (non-padding) tokens per second of training, evaluations excluded
    samples_seen: int  # sequences trained on, from the start of the run (all attempts)
    epoch: float
    skipped_steps: int = 0  # optimizer steps not applied because a number was not finite, from the start
    # Sequences per second of training, the window's applied steps like tokens_per_second (None: written
    # before bertpt reported it).
    samples_per_second: float | None = None
    # Model FLOPs utilization, a share in [0, 1]: the useful training FLOP/s (real tokens, the MLM head at the
    # predicted positions) over the device's dense peak for the step's precision
    # (worker.pretraining.estimates.model_flops_utilization). None on a CPU or a GPU without a known peak.
    mfu: float | None = None


class EvalMetrics(_Metrics):
    """One evaluation of a whole split with its fixed masks. ``perplexity`` = exp(masked_lm_loss)."""

    masked_lm_loss: float
    masked_lm_accuracy: float
    perplexity: float
    next_sentence_loss: float | None = None
    next_sentence_accuracy: float | None = None


class MetricsRecord(_Record):
    """The metrics of ``split`` at optimizer step ``step``: :class:`TrainMetrics` for ``train``,
    :class:`EvalMetrics` for ``eval`` (held-out domain text) and ``reference`` (general text)."""

    kind: Literal["metrics"] = "metrics"
    split: MetricSplit
    step: int
    metrics: TrainMetrics | EvalMetrics

    @model_validator(mode="after")
    def _metrics_of_split(self) -> MetricsRecord:
        if (self.split == "train") != isinstance(self.metrics, TrainMetrics):
            raise ValueError(f"the {self.split} split carries {type(self.metrics).__name__}")
        return self


# --------------------------------------------------------------------------------------------------
# What the data and the base model tell the user


class RunWarning(_Record):
    """Something that makes the run worse but does not stop it (a corpus problem, newly initialized
    heads). ``count`` and ``first_line`` locate corpus problems; ``parameters`` lists newly initialized
    parameters."""

    model_config = ConfigDict(extra="ignore")  # stored with runs and corpora: read what other versions wrote

    code: str = Field(examples=["one_sentence_documents"])
    message: str
    count: int | None = Field(None, description="How many times the corpus shows the problem.")
    first_line: int | None = Field(None, description="1-based line of the first occurrence in the corpus.")
    parameters: list[str] | None = Field(None, description="Parameters newly initialized (not in the base).")
    source: str | None = Field(
        None,
        examples=["corpus"],
        description="What the warning is about when a run has several inputs: a corpus (`corpus`, "
        "`eval_corpus`, `reference_corpus`, `replay_corpus`; ``first_line`` is a line of that file) or a "
        "prepared split (`train`, `eval`, `reference`, `replay`). None: the run itself, or the only corpus "
        "(an upload).",
    )


class SplitSummary(_Record):
    """The instances of one prepared split, drawn from ``documents`` documents.

    ``is_next_share`` the share of IsNext pairs (None without next-sentence prediction); ``masked_share``
    the share of instance tokens that are prediction targets (special tokens, [UNK] included, never are;
    with dynamic whole-word masking, those of the first epoch's masks, drawn for up to 1,024 instances a
    shard); ``unk_rate`` the share of [UNK]
    among the instances' text tokens (special tokens left out, like the corpus's ``unk_rate``);
    ``tokens_used_share`` the share of the split's corpus tokens that reach at least one instance (the
    rest is lost to truncation). None: written before bertpt reported it.
    """

    documents: int
    static_masks: bool
    instances: int
    tokens: int
    shards: list[str]
    is_next_share: float | None
    mean_length: float
    short_target_share: float
    truncated_pairs: int
    masked_share: float
    unk_rate: float
    tokens_used_share: float | None = None


class ReplaySummary(_Record):
    """The general-domain text replayed against forgetting (``replay_ratio``): ``instances_per_epoch`` of
    every epoch's ``instances_per_epoch + domain_instances_per_epoch`` training instances come from the
    replay corpus's ``instances`` prepared instances (the cache entry ``data_key``), drawn without
    replacement and mixed evenly through the epoch. ``held_out_for_reference``: the replay corpus is also
    the reference corpus; its held-out part is the reference evaluation, only the rest is replayed."""

    ratio: float
    corpus_sha256: str
    data_key: str
    instances: int
    instances_per_epoch: int
    domain_instances_per_epoch: int
    held_out_for_reference: bool


class PreparedDataSummary(_Record):
    """What preparing the data produced: the cache entry, the corpus statistics, the splits, and the replay
    corpus's instances mixed into every epoch, if any."""

    data_key: str
    corpus: dict[str, Any]  # worker.pretraining.prepare's corpus summary (statistics and warnings)
    eval_corpus: dict[str, Any] | None = None
    splits: dict[str, SplitSummary]
    preparation_seconds: float | None = None
    replay: ReplaySummary | None = None


class TokenizationStats(_Record):
    """How a tokenizer cuts a text into wordpieces (:func:`worker.pretraining.vocabulary.tokenization_stats`).

    ``words``: the tokenizer's own words, what its normalizer and pre-tokenizer make of the text (BERT's
    lowercases, then splits at whitespace and around every punctuation character: ``"kinase,"`` is two
    words); ``unk_rate``: the share of those words whose wordpieces include the unknown token (WordPiece
    turns a word it cannot spell into one ``[UNK]``); ``wordpieces_per_word``: wordpieces over words (1.0:
    every word is one token). The preparation's ``unk_rate`` (corpus summary, :class:`SplitSummary`) is a
    share of wordpieces instead; its ``wordpieces_per_word`` is this one.
    """

    words: int
    unk_rate: float
    wordpieces_per_word: float


class AddedToken(_Record):
    """A word of the domain made one token (``add_domain_tokens``): ``count`` times in the training corpus
    (as the tokenizer's words), cut into ``pieces`` by the base tokenizer. Its id (and embedding row)
    ``id`` is ``slot`` ``unused``, the row of the base vocabulary's placeholder ``replaced`` (e.g.
    ``[unused0]``), or ``appended``, an id after the vocabulary's (a row added by resizing the embeddings,
    unless the matrix already had rows beyond the vocabulary)."""

    token: str
    id: int
    count: int
    pieces: list[str]
    slot: Literal["unused", "appended"]
    replaced: str | None = None


class VocabularyExtension(_Record):
    """What ``add_domain_tokens`` did to the vocabulary (:mod:`worker.pretraining.vocabulary`): the words
    ``added`` (most frequent first; empty when no word of the corpus qualified), the tokenization of the
    training corpus ``before`` and ``after``, and the embedding rows: ``vocab_size_before`` the base
    model's, ``resized_to`` the new size when rows were appended (a multiple of 64), None when the
    ``[unusedK]`` rows held every word."""

    add_domain_tokens: int
    min_count: int
    added: list[AddedToken]
    before: TokenizationStats
    after: TokenizationStats
    vocab_size_before: int
    resized_to: int | None = None

    def summary(self, examples: int = 10) -> str:
        """One line for a person: how many words were added where, the tokenization before and after, and
        the ``examples`` most frequent words with their counts."""
        if not self.added:
            return (
                f"add_domain_tokens={self.add_domain_tokens}: no word of the corpus seen at least "
                f"{self.min_count} times is cut into several wordpieces or mapped to [UNK]; the vocabulary "
                f"is unchanged (wordpieces per word {self.before.wordpieces_per_word})"
            )
        unused = sum(token.slot == "unused" for token in self.added)
        rows = f"{unused} in [unusedK] rows, {len(self.added) - unused} appended"
        if self.resized_to is not None:
            rows += f"; embeddings resized from {self.vocab_size_before} to {self.resized_to} rows"
        words = ", ".join(f"{token.token} ({token.count})" for token in self.added[:examples])
        more = ", ..." if len(self.added) > examples else ""
        return (
            f"added {len(self.added)} domain words as tokens ({rows}): wordpieces per word "
            f"{self.before.wordpieces_per_word} -> {self.after.wordpieces_per_word}, words with [UNK] "
            f"{self.before.unk_rate:.2%} -> {self.after.unk_rate:.2%}; {words}{more}"
        )


# --------------------------------------------------------------------------------------------------
# Events


class ModelShape(_Record):
    """The size of a BERT, as its config.json gives it: what the time of a training step depends on (see
    :mod:`worker.pretraining.estimates`)."""

    model_config = ConfigDict(extra="ignore")

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int | None = None
    vocab_size: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape | None:
        """From a config.json's values; None when it lacks the hidden size or the layers."""
        values = {name: config.get(name) for name in cls.model_fields}
        if not all(isinstance(values[name], int) for name in ("hidden_size", "num_hidden_layers")):
            return None
        return cls.model_validate({k: v for k, v in values.items() if isinstance(v, int)})

    @property
    def label(self) -> str:
        """``<layers>x<hidden size>``, as model sizes are usually written (``12x768``: BERT-base)."""
        return f"{self.num_hidden_layers}x{self.hidden_size}"


class TrainingStarted(_Record):
    """Training starts (or resumes at ``step``): data prepared, model loaded, about to take step 1."""

    kind: Literal["started"] = "started"
    step: int
    max_steps: int
    resumed_from_step: int | None
    train_instances: int  # per epoch, replay instances included
    replay_instances: int = 0  # of train_instances, those from the replay corpus (see data.replay)
    eval_splits: dict[str, int]  # eval split -> instances
    precision: Literal["fp32", "bf16", "fp16"]
    device: str
    # The accelerator as torch names it ("NVIDIA H100 80GB HBM3"); None on a CPU. Its peak FLOP/s is the
    # denominator of the training metrics' mfu.
    device_name: str | None = None
    data: PreparedDataSummary
    warnings: list[RunWarning]
    vocabulary: VocabularyExtension | None = None  # add_domain_tokens: the words made tokens
    model: ModelShape | None = None  # what the throughput was measured on (run estimates)


class CheckpointSaved(_Record):
    """A complete checkpoint was published at ``path`` (``checkpoint-<step>``); ``kept_steps`` are the
    checkpoints left after rotation, this one included."""

    kind: Literal["checkpoint"] = "checkpoint"
    step: int
    path: Path
    metrics: dict[MetricSplit, TrainMetrics | EvalMetrics]  # the latest of each split
    tokens_seen: int
    kept_steps: list[int]


class TrainingFinished(_Record):
    kind: Literal["finished"] = "finished"
    step: int
    status: TrainingStatus
    model_path: Path | None


class TrainingFailed(_Record):
    """The training raised; ``error`` is ``<type>: <message>`` (the exception itself propagates)."""

    kind: Literal["failed"] = "failed"
    step: int
    error: str


class StepSkipped(_Record):
    """Optimizer step ``step`` was not applied: its loss or its gradient norm was not finite (``loss`` and
    ``grad_norm`` are None then), or, with fp16, the loss scaler found an overflow (its scale goes down;
    that does not count towards ``max_nonfinite_steps``)."""

    kind: Literal["step_skipped"] = "step_skipped"
    step: int
    reason: Literal["non_finite_loss", "non_finite_grad_norm", "fp16_overflow"]
    loss: float | None
    grad_norm: float | None
    consecutive: int  # skipped steps in a row that count towards max_nonfinite_steps, this one included
    skipped_steps: int  # from the start of the run

    def summary(self) -> str:
        """One line for a person: ``step 12 was not applied: its loss was not finite (2 in a row)``."""
        if self.reason == "fp16_overflow":
            return f"step {self.step} was not applied: the fp16 loss scaler found an overflow (scale lowered)"
        what = "loss" if self.reason == "non_finite_loss" else "gradient norm"
        return f"step {self.step} was not applied: its {what} was not finite ({self.consecutive} in a row)"


class Progress(_Record):
    kind: Literal["progress"] = "progress"
    step: int
    max_steps: int


class LogLine(_Record):
    kind: Literal["log"] = "log"
    message: str


TrainingEvent = TrainingStarted | CheckpointSaved | StepSkipped | TrainingFinished | TrainingFailed
TrainingRecord = MetricsRecord | TrainingEvent | Progress | LogLine

_RECORD: TypeAdapter[TrainingRecord] = TypeAdapter(Annotated[TrainingRecord, Field(discriminator="kind")])


def parse_record(text: str | bytes) -> TrainingRecord:
    """A record from its JSON (a line of ``metrics.jsonl``)."""
    return _RECORD.validate_json(text)


# --------------------------------------------------------------------------------------------------
# The end of a run


class SelectedCheckpoint(_Record):
    """Which step's weights a run exported, and why (``select_checkpoint``, ``max_reference_loss_increase``;
    see :mod:`worker.pretraining.selection`).

    ``step`` 0 is the base checkpoint as evaluated before training (exported only when no trained step is
    within the forgetting budget). The losses are that step's held-out (``eval``) and reference-corpus
    masked_lm_loss, None when the split does not exist or the step was not evaluated;
    ``reference_loss_increase`` the latter minus step 0's, in nats. ``rejected_over_budget``: the evaluated
    steps whose reference loss rose more than ``max_reference_loss_increase`` above step 0's.
    """

    step: int
    select_checkpoint: Literal["last", "best"]
    reason: str
    eval_masked_lm_loss: float | None = None
    reference_masked_lm_loss: float | None = None
    reference_loss_increase: float | None = None
    max_reference_loss_increase: float | None = None
    rejected_over_budget: list[int] = []
    evaluated_steps: list[int] = []  # evaluated after step 0: the candidates, over budget included


class StoppedEarly(_Record):
    """The run stopped at ``step``, before ``max_steps``, because ``patience`` evaluations in a row did not
    lower the held-out masked_lm_loss below that of ``best_step`` (``early_stopping_patience``)."""

    step: int
    best_step: int
    best_eval_masked_lm_loss: float
    patience: int
    reason: str


class TrainingOutcome(_Record):
    """What a run ended with: shared by :class:`TrainingResult` and the model's :class:`ModelManifest`."""

    status: TrainingStatus
    steps: int
    max_steps: int
    baseline_metrics: dict[EvalSplit, EvalMetrics]  # step 0: the base checkpoint, untouched
    final_metrics: dict[EvalSplit, EvalMetrics]
    final_metrics_step: int | None
    train_metrics: TrainMetrics | None
    warnings: list[RunWarning]
    runtime_seconds: float
    samples_seen: int
    tokens_seen: int
    data_key: str
    skipped_steps: int = 0
    # The step whose weights were exported and why (None: no model, the run was cancelled).
    selected_checkpoint: SelectedCheckpoint | None = None
    stopped_early: StoppedEarly | None = None  # set when early_stopping_patience ended the run
    replay: ReplaySummary | None = None  # the general-domain text mixed into every epoch, if any
    vocabulary: VocabularyExtension | None = None  # add_domain_tokens: the words made tokens, if asked

    @field_validator("train_metrics", mode="before")
    @classmethod
    def _nothing_logged(cls, value: Any) -> Any:
        return value or None  # bertpt 0.1 wrote {} when no training step was logged

    def outcome_fields(self) -> dict[str, Any]:
        """The fields of :class:`TrainingOutcome` (a result and a manifest are built from them)."""
        return {name: getattr(self, name) for name in TrainingOutcome.model_fields}


class TrainingResult(TrainingOutcome):
    """What ``run_pretraining`` returns (and writes to ``result.json``)."""

    kind: Literal["result"] = "result"
    run_dir: Path
    model_path: Path | None  # None when cancelled
    checkpoint_path: Path | None  # the newest complete checkpoint
    resumed_from: Path | None = None


class ModelManifest(TrainingOutcome):
    """``bertpt_manifest.json`` beside the final model's weights."""

    model_config = ConfigDict(extra="ignore")  # written by other versions too

    format: int
    run: dict[str, Any]  # the run's identity: hyperparameters, corpus and base digests, data keys
    hyperparameters: dict[str, Any]
    corpus_sha256: str
    base_model: str
    precision: str
    versions: dict[str, str]
    created_at: datetime
