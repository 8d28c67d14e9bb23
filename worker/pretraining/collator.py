"""Turns a list of training instances into a padded, masked BERT pre-training batch.

An instance is a dict with ``input_ids`` (1-D, unmasked, unpadded ``[CLS] A [SEP] B [SEP]``),
``segment_b_start``, ``next_sentence_label`` and ``index`` (its position in its dataset); statically
masked instances also carry ``masked_lm_positions`` and ``masked_lm_ids``.

Dynamic masks are drawn per instance from ``instance_rng(seed, epoch, index)``: they do not depend on
which instances share the batch, on the batch order or on the DataLoader worker, they are reproduced
exactly after a resume, and they differ from epoch to epoch. The batch is assembled in numpy and handed
to torch once per tensor.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from worker.pretraining.masking import IGNORE_INDEX, TokenMasker, instance_rng

__all__ = ["PretrainingCollator"]


def _round_up(value: int, multiple: int | None) -> int:
    if not multiple:
        return value
    return -(-value // multiple) * multiple


class PretrainingCollator:
    """Pads and masks instances into the tensors of ``BertForPreTraining`` plus a gathered-MLM view.

    Returns ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels`` (original id at predicted
    positions, -100 elsewhere) and ``next_sentence_label``, plus ``masked_lm_positions`` /
    ``masked_lm_labels`` (B, P): the predicted positions left-aligned (padded with 0) and their original
    ids (padded with -100), so an MLM head can project only the predicted positions onto the vocabulary.

    ``masker=None`` means static masking: every instance must carry its stored mask. With a masker,
    masks are drawn dynamically (and any stored mask is ignored). ``max_predictions_per_seq``, when set,
    fixes P to that width (static shapes, e.g. for torch.compile) instead of the batch's maximum.
    Set ``epoch`` at the start of every epoch so dynamic masks change between epochs. It is kept in shared
    memory: DataLoader workers that persist across epochs (``persistent_workers``) hold a copy of the
    collator made when they started, and read the epoch the main process set for every batch they build.
    """

    def __init__(
        self,
        *,
        pad_token_id: int,
        masker: TokenMasker | None,
        seed: int = 0,
        pad_to_multiple_of: int | None = 8,
        max_predictions_per_seq: int | None = None,
    ):
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be positive, got {max_predictions_per_seq}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative (it keys numpy's SeedSequence), got {seed}")
        self.pad_token_id = int(pad_token_id)
        self.masker = masker
        self.seed = int(seed)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_predictions_per_seq = max_predictions_per_seq
        # Shared with the worker processes (inherited when they start); no lock: one writer, between epochs.
        self._epoch = multiprocessing.RawValue(ctypes.c_int64, 0)

    @property
    def epoch(self) -> int:
        """The epoch whose masks are drawn (0-based)."""
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = int(value)

    def __call__(self, instances: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("cannot collate an empty batch")
        sequences = [np.asarray(instance["input_ids"]) for instance in instances]
        masks = [self._mask_of(instance, ids) for instance, ids in zip(instances, sequences, strict=True)]
        lengths = np.array([ids.size for ids in sequences], dtype=np.int64)
        width = _round_up(int(lengths.max()), self.pad_to_multiple_of)

        columns = np.arange(width)
        attention = columns < lengths[:, None]
        input_ids = np.full(attention.shape, self.pad_token_id, dtype=np.int64)
        input_ids[attention] = np.concatenate(sequences)  # row-major fill == concatenation order

        segment_b_start = np.array([int(instance["segment_b_start"]) for instance in instances])
        token_type_ids = (attention & (columns >= segment_b_start[:, None])).astype(np.int64)

        labels, masked_lm_positions, masked_lm_labels = self._apply_masks(input_ids, masks)
        next_sentence_label = np.array(
            [int(instance["next_sentence_label"]) for instance in instances], dtype=np.int64
        )
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "next_sentence_label": torch.from_numpy(next_sentence_label),
            "masked_lm_positions": torch.from_numpy(masked_lm_positions),
            "masked_lm_labels": torch.from_numpy(masked_lm_labels),
        }

    def _mask_of(self, instance: Mapping[str, Any], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, replacement ids) of one instance: drawn now, or the ones stored at preparation."""
        if self.masker is not None:
            rng = instance_rng(self.seed, self.epoch, int(instance["index"]))
            return self.masker.mask(ids, rng)
        if "masked_lm_positions" not in instance or "masked_lm_ids" not in instance:
            raise ValueError(
                "static masking (masker=None) needs instances with masked_lm_positions and masked_lm_ids; "
                "prepare the data with masking='static' or give the collator a TokenMasker"
            )
        positions = np.asarray(instance["masked_lm_positions"], dtype=np.int64)
        replacements = np.asarray(instance["masked_lm_ids"])
        if positions.shape != replacements.shape or positions.ndim != 1:
            raise ValueError("masked_lm_positions and masked_lm_ids must be 1-D arrays of the same length")
        if positions.size and (positions.min() < 0 or positions.max() >= ids.size):
            raise ValueError(f"masked_lm_positions outside a sequence of {ids.size} tokens")
        return positions, replacements

    def _apply_masks(
        self, input_ids: np.ndarray, masks: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Write the masks into ``input_ids`` in place; return labels and the gathered-MLM arrays."""
        counts = np.array([positions.size for positions, _ in masks], dtype=np.int64)
        width = self._prediction_width(int(counts.max()))
        rows = np.repeat(np.arange(len(masks)), counts)
        positions = np.concatenate([p for p, _ in masks]).astype(np.int64, copy=False)
        replacements = np.concatenate([r for _, r in masks])

        originals = input_ids[rows, positions]
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        labels[rows, positions] = originals
        input_ids[rows, positions] = replacements

        slots = np.arange(width) < counts[:, None]
        masked_lm_positions = np.zeros(slots.shape, dtype=np.int64)
        masked_lm_positions[slots] = positions
        masked_lm_labels = np.full(slots.shape, IGNORE_INDEX, dtype=np.int64)
        masked_lm_labels[slots] = originals
        return labels, masked_lm_positions, masked_lm_labels

    def _prediction_width(self, most_in_batch: int) -> int:
        """P: the batch's maximum, or the fixed width when one is configured. At least 1, so a gathered
        head never sees an empty dimension (a padded slot has label -100 and costs nothing)."""
        if self.max_predictions_per_seq is None:
            return max(1, most_in_batch)
        if most_in_batch > self.max_predictions_per_seq:
            raise ValueError(
                f"an instance has {most_in_batch} predictions, more than max_predictions_per_seq="
                f"{self.max_predictions_per_seq}"
            )
        return self.max_predictions_per_seq
