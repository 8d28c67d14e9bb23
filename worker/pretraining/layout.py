"""The names of what a run writes into its directory: one definition for the training library, the
worker that records it and the API that serves it (the service's storage keys are derived from these,
see ``app.storage.keys``).

    <run directory>/
      model/                       the final model (save_pretrained + MODEL_MANIFEST)
      checkpoints/checkpoint-<step>/   complete checkpoints (CHECKPOINT_MANIFEST written last)
      checkpoints/tmp-*            interrupted writes and deletions
      tensorboard/                 every metric, as TensorBoard scalars
      metrics.jsonl                every record (worker.pretraining.records), one JSON object a line
      result.json                  the TrainingResult

``RunLayout`` works on any ``PurePath``: a local ``Path`` for the library, a ``PurePosixPath`` storage key
for the service. This module imports the standard library only.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Generic, TypeVar

__all__ = [
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_PREFIX",
    "MODEL_MANIFEST",
    "TMP_PREFIX",
    "TRAINER_STATE",
    "TRAINING_STATE_PATTERNS",
    "RunLayout",
    "checkpoint_name",
    "checkpoint_step",
    "is_training_state",
]

CHECKPOINT_PREFIX = "checkpoint-"
# A directory being written or deleted: never a complete checkpoint (see worker.pretraining.run_checkpoints).
TMP_PREFIX = "tmp-"
CHECKPOINT_MANIFEST = "bertpt_checkpoint.json"
MODEL_MANIFEST = "bertpt_manifest.json"
TRAINER_STATE = "trainer_state.json"  # transformers' Trainer name
# Files of a checkpoint that only resuming needs, not from_pretrained (transformers' Trainer names).
TRAINING_STATE_PATTERNS = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    TRAINER_STATE,
    "training_args.bin",
)

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
P = TypeVar("P", bound=PurePath)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint directory's name, None for any other name."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


def is_training_state(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TRAINING_STATE_PATTERNS)


@dataclass(frozen=True)
class RunLayout(Generic[P]):
    """Where a run writes, under ``root``."""

    root: P

    @property
    def model(self) -> P:
        return self.root / "model"

    @property
    def checkpoints(self) -> P:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> P:
        return self.checkpoints / checkpoint_name(step)

    @property
    def tensorboard(self) -> P:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> P:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> P:
        return self.root / "result.json"
