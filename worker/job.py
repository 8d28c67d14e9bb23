"""What one training needs, as plain values: built by the supervisor from database rows
(:mod:`worker.inputs`), pickled to the training process (:mod:`worker.training_process`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainingJob"]


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
    hf_hub_offline: bool = False
    dataloader_workers: int | None = None
