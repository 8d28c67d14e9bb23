"""What one training or one evaluation needs, as plain values: built by the supervisor from database rows
(:mod:`worker.inputs`, :mod:`worker.evaluation_executor`), pickled to the child process
(:mod:`worker.training_process`, :mod:`worker.evaluation_process`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvaluatedModel", "EvaluationJob", "TrainingJob"]


@dataclass(frozen=True)
class TrainingJob:
    """Everything the training process needs, as plain values (it is pickled to the child). Every path
    was derived from database rows by the supervisor."""

    run_id: str
    base_model: str  # what the loader takes: a local directory, or a hub id for hf: models
    base_model_spec: str  # the run's base_model, for messages
    corpus: str
    corpus_id: str
    out_dir: str
    cache_dir: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_corpus: str | None = None
    eval_corpus_id: str | None = None
    reference_corpus: str | None = None
    reference_corpus_id: str | None = None
    replay_corpus: str | None = None
    replay_corpus_id: str | None = None
    hf_hub_offline: bool = False
    dataloader_workers: int | None = None
    devices: int = 1  # processes of the run (torchrun, one a device): resources.devices


@dataclass(frozen=True)
class EvaluatedModel:
    """One model of an evaluation: ``name`` (its normalized spec, what the result calls it) and ``source``
    (a local directory, or a hub id for hf: models, which the child downloads)."""

    name: str
    source: str


@dataclass(frozen=True)
class EvaluationJob:
    """Everything the evaluation process needs, as plain values (pickled to the child). The dataset's
    files are local paths derived from its row; ``train_name``/``test_name`` are the uploaded file names
    that errors report."""

    evaluation_id: str
    dataset_id: str
    models: tuple[EvaluatedModel, ...]
    train_path: str
    train_name: str
    config: dict[str, Any]  # worker.evaluation.settings.EvaluationConfig as JSON
    test_path: str | None = None
    test_name: str | None = None
    hf_hub_offline: bool = False
