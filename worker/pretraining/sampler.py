"""The order of training instances: length-grouped batches, reproducible per (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["LengthGroupedSampler", "longest_first"]


class LengthGroupedSampler(Sampler[int]):
    """Shuffled batches of similar lengths, so dynamic padding pads little.

    Indices are shuffled, cut into mega-batches of ``megabatch_factor`` batches, sorted by length inside
    each mega-batch and cut into batches; the full batches are then shuffled (the one short batch, if
    any, stays last so batches stay aligned with the DataLoader's). The order depends only on
    (seed, epoch): a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: int, megabatch_factor: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.megabatch = self.batch_size * int(megabatch_factor)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, 0x1E57])
        order = rng.permutation(len(self.lengths))
        full: list[np.ndarray] = []
        short: list[np.ndarray] = []
        for start in range(0, len(order), self.megabatch):
            chunk = order[start : start + self.megabatch]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b : b + self.batch_size]
                (full if len(batch) == self.batch_size else short).append(batch)
        return [full[i] for i in rng.permutation(len(full))] + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from (int(i) for i in batch)


def longest_first(dataset: Any) -> list[int]:
    """Longest first: eval batches of similar lengths (order does not matter for sums)."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        return list(range(len(dataset)))
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()
