"""Replay of a general-domain corpus against forgetting: ``replay_ratio`` of every epoch's training
instances come from it (the evidence for the share is in ``Hyperparameters.replay_ratio``'s help).

:class:`ReplayMixture` is the training set of a run with replay: the ``D`` domain instances at indices
``0 .. D-1`` and, from ``D`` on, the *replay stream*: the replay corpus's training instances in seeded
permutations laid end to end (cycle ``c`` is the permutation drawn from ``(seed, c)``). Epoch ``e`` takes
the stream positions ``[e R, (e + 1) R)``, where ``R = round(D r / (1 - r))`` makes the replay ``r`` of
the epoch's ``N = D + R`` instances: drawn without replacement, and the whole replay corpus is used before
any of its instances comes back (within an epoch too, when it is smaller than ``R``). The index of a replay
instance is ``D`` + its stream position, unique per occurrence, so its dynamic mask (keyed by
``(seed, epoch, index)``) is new each time it comes back.

:class:`ReplayMixingSampler` orders an epoch:

1. where the replay instances go: position ``p`` of the epoch holds one iff
   ``floor((p + 1) R / N) > floor(p R / N)`` (Bresenham's rule), so they are spread evenly: consecutive
   ones are ``floor(N / R)`` or ``ceil(N / R)`` positions apart, and every window of ``ceil(N / R)``
   consecutive instances holds one. Megatron-LM's blended datasets (``build_blending_indices``, also in
   GPT-NeoX, with which Ibrahim et al. 2024 trained) interleave their sources the same way;
2. which instances fill them: as in :class:`~worker.pretraining.sampler.LengthGroupedSampler`, groups of
   ``megabatch_factor`` batches take their share of a seeded permutation of the domain instances and of the
   epoch's replay instances, each sorted by length; the group's batches, visited in a seeded order, take
   the next piece of both sorted lists, so a batch's domain and replay instances have similar lengths and
   dynamic padding pads little.

The order is a pure function of (seed, epoch): a resumed run sees the batches of an uninterrupted one
(Trainer skips those already trained). numpy only; the sampler is a torch ``Sampler``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ReplayMixingSampler", "ReplayMixture", "Source"]

Source = Literal["domain", "replay"]
# Tags of the random generators, so that their streams differ from the sampler's and the preparation's.
_REPLAY_STREAM = 0x5E91
_MIXING = 0x313C
_CACHED_CYCLES = 4  # permutations of the replay corpus kept (an epoch spans one or two of them)


class ReplayMixture:
    """The domain instances (``domain``, a prepared split) and the replay stream over ``replay``'s
    instances, ``replay_per_epoch`` of which join each epoch (see the module docstring).

    ``len()`` is the instances of one epoch (``D + R``). ``mixture[i]`` is the instance dict of
    :class:`~worker.pretraining.dataset.PreparedSplit` plus ``source`` (``"domain"`` or ``"replay"``); a
    replay instance's ``index`` is its mixture index. Raises ValueError for an empty replay split or a
    ``replay_per_epoch`` below 1.
    """

    def __init__(self, domain: Any, replay: Any, *, replay_per_epoch: int, seed: int):
        if len(replay) == 0:
            raise ValueError("the replay split holds no instance")
        if replay_per_epoch < 1:
            raise ValueError(f"replay_per_epoch must be at least 1, got {replay_per_epoch}")
        self.domain = domain
        self.replay = replay
        self.domain_instances = len(domain)
        self.replay_instances = len(replay)  # the pool the stream cycles through
        self.replay_per_epoch = int(replay_per_epoch)
        self.seed = int(seed)
        self._domain_lengths = np.asarray(domain.lengths, dtype=np.int64)
        self._replay_lengths = np.asarray(replay.lengths, dtype=np.int64)
        self._cycles: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.domain_instances + self.replay_per_epoch

    def source(self, index: int) -> Source:
        """Where the instance at mixture index ``index`` comes from."""
        return "domain" if index < self.domain_instances else "replay"

    def epoch_replay(self, epoch: int) -> np.ndarray:
        """The mixture indices of epoch ``epoch``'s replay instances, in stream order."""
        start = self.domain_instances + int(epoch) * self.replay_per_epoch
        return np.arange(start, start + self.replay_per_epoch, dtype=np.int64)

    def replay_split_indices(self, indices: np.ndarray) -> np.ndarray:
        """The replay split's instance behind each replay mixture index (all ``>= D``)."""
        position = np.asarray(indices, dtype=np.int64) - self.domain_instances
        if position.size and position.min() < 0:
            raise IndexError("a domain index is not a replay index")
        cycle, offset = np.divmod(position, self.replay_instances)
        found = np.empty_like(position)
        for c in np.unique(cycle):
            here = cycle == c
            found[here] = self._cycle(int(c))[offset[here]]
        return found

    def lengths_of(self, indices: np.ndarray) -> np.ndarray:
        """Token lengths of the instances at mixture ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = np.empty(indices.shape, dtype=np.int64)
        domain = indices < self.domain_instances
        lengths[domain] = self._domain_lengths[indices[domain]]
        lengths[~domain] = self._replay_lengths[self.replay_split_indices(indices[~domain])]
        return lengths

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            raise IndexError(index)
        if index < self.domain_instances:
            return {**self.domain[index], "source": "domain"}
        item = self.replay[int(self.replay_split_indices(np.array([index]))[0])]
        return {**item, "index": index, "source": "replay"}

    def _cycle(self, cycle: int) -> np.ndarray:
        """The permutation of the replay split that the stream's ``cycle``-th pass follows."""
        order = self._cycles.get(cycle)
        if order is None:
            order = np.random.default_rng([self.seed, _REPLAY_STREAM, cycle]).permutation(
                self.replay_instances
            )
            if len(self._cycles) >= _CACHED_CYCLES:
                del self._cycles[min(self._cycles)]
            self._cycles[cycle] = order
        return order


class ReplayMixingSampler(Sampler[int]):
    """The order of a :class:`ReplayMixture`'s epoch: replay spread evenly, batches of similar lengths
    (see the module docstring). Reproducible per (seed, epoch); ``set_epoch`` as Trainer calls it."""

    def __init__(self, mixture: ReplayMixture, batch_size: int, *, seed: int, megabatch_factor: int = 50):
        self.mixture = mixture
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.megabatch_factor = int(megabatch_factor)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.mixture)

    def replay_slots(self) -> np.ndarray:
        """``[N]`` booleans: the epoch's positions that hold a replay instance (Bresenham's rule)."""
        n, r = len(self.mixture), self.mixture.replay_per_epoch
        below = np.arange(n + 1, dtype=np.int64) * r // n  # floor(p R / N) for p = 0 .. N
        return np.diff(below) > 0

    def batches(self) -> list[np.ndarray]:
        mixture, size = self.mixture, self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch, _MIXING])
        slots = self.replay_slots()
        starts = np.arange(0, len(slots), size)
        replay_counts = np.add.reduceat(slots.astype(np.int64), starts)
        domain_counts = np.minimum(starts + size, len(slots)) - starts - replay_counts
        domain = rng.permutation(mixture.domain_instances)
        replay = mixture.epoch_replay(self.epoch)
        batches: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(starts)
        taken_domain = taken_replay = 0
        for first in range(0, len(starts), self.megabatch_factor):
            group = np.arange(first, min(first + self.megabatch_factor, len(starts)))
            domain_part = domain[taken_domain : taken_domain + domain_counts[group].sum()]
            replay_part = replay[taken_replay : taken_replay + replay_counts[group].sum()]
            taken_domain += len(domain_part)
            taken_replay += len(replay_part)
            domain_part = domain_part[np.argsort(-mixture.lengths_of(domain_part), kind="stable")]
            replay_part = replay_part[np.argsort(-mixture.lengths_of(replay_part), kind="stable")]
            at_domain = at_replay = 0
            for b in rng.permutation(group):  # each batch takes the next length quantile of both
                start = starts[b]
                here = slots[start : start + size]
                batch = np.empty(len(here), dtype=np.int64)
                batch[here] = replay_part[at_replay : at_replay + replay_counts[b]]
                batch[~here] = domain_part[at_domain : at_domain + domain_counts[b]]
                at_replay += replay_counts[b]
                at_domain += domain_counts[b]
                batches[b] = batch
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from (int(i) for i in batch)
