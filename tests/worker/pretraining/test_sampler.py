"""LengthGroupedSampler: batches of similar lengths over a prepared split, and the trainer's use of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from worker.pretraining.sampler import LengthGroupedSampler
from worker.pretraining.trainer import PretrainingTrainer

pytestmark = pytest.mark.slow  # prepares a corpus and builds a trainer on the tiny BERT


def test_length_grouping_with_prepared_split(
    prepared: Any, make_trainer: Callable[..., PretrainingTrainer]
) -> None:
    lengths = prepared.train.lengths
    sampler = LengthGroupedSampler(lengths, 8, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(len(lengths)))
    assert list(sampler) == epoch0  # reproducible
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    grouped = np.mean([np.ptp(lengths[b]) for b in sampler.batches() if len(b) == 8])
    shuffled = np.mean(
        [
            np.ptp(lengths[b])
            for b in np.array_split(np.random.default_rng(0).permutation(len(lengths)), len(lengths) // 8)
        ]
    )
    assert grouped < shuffled / 3

    trainer = make_trainer()
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) >= {"input_ids", "masked_lm_positions", "masked_lm_labels", "next_sentence_label"}
    real = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] - int(real.min()) < 16  # little padding
