"""Masked-LM masking: which tokens of a sequence the model must predict, and what it sees there.

The rules are google-research/bert's ``create_masked_lm_predictions``:

- a sequence of ``n`` tokens ([CLS] and [SEP]s included) predicts
  ``min(max_predictions_per_seq, max(1, round(n * masked_lm_prob)))`` tokens;
- special tokens are never predicted;
- with whole-word masking a word (a piece plus its ``##`` continuations) is chosen whole, words are
  taken in random order and a word that would overflow the count is skipped, as Google does;
- each chosen piece independently becomes [MASK] (``mask_replace_prob``), a random non-special token
  (``random_replace_prob``) or stays itself. Under whole-word masking too: transformers'
  ``DataCollatorForWholeWordMask`` forces 100% [MASK] there, which makes the model's input at predicted
  positions always [MASK] and defeats the point of the 10/10; we keep Google's per-piece draws.

This runs for every sequence of every batch (dynamic masking), so each call is a handful of vectorized
numpy operations per sequence; nothing loops over tokens. The module imports numpy only, so the data
preparation (static masking) can use it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "MaskingConfig",
    "TokenMasker",
    "apply_masks",
    "instance_rng",
]

IGNORE_INDEX = -100
"""Label of positions that are not predicted (PyTorch's ``CrossEntropyLoss`` default ``ignore_index``)."""

_EMPTY_POSITIONS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class MaskingConfig:
    """How many tokens to predict and how to corrupt them; field names match :class:`Hyperparameters`."""

    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False

    def __post_init__(self) -> None:
        # Validated here as well as in Hyperparameters: the masker is also built directly (tests, tools).
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(
                f"max_predictions_per_seq must be at least 1, got {self.max_predictions_per_seq}"
            )
        for name in ("mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1")

    @classmethod
    def from_hyperparameters(cls, h: Any) -> MaskingConfig:
        """Take the masking fields from any object carrying them (Hyperparameters, PreparationConfig)."""
        return cls(
            masked_lm_prob=float(h.masked_lm_prob),
            max_predictions_per_seq=int(h.max_predictions_per_seq),
            mask_replace_prob=float(h.mask_replace_prob),
            random_replace_prob=float(h.random_replace_prob),
            whole_word_mask=bool(h.whole_word_mask),
        )

    def num_to_predict(self, sequence_length: int) -> int:
        """Google's count, from the full length including [CLS]/[SEP] (Python 3 ``round``: half to even)."""
        return min(self.max_predictions_per_seq, max(1, round(sequence_length * self.masked_lm_prob)))


def instance_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one instance's dynamic mask in one epoch.

    Keyed by the instance, not by the batch or the worker, so a mask does not depend on batch
    composition, shuffling or ``num_workers``, is reproduced exactly after a resume, and changes with
    the epoch.
    """
    return np.random.default_rng([seed, epoch, index])


def _id_lookup(vocab_size: int, ids: Iterable[int], what: str) -> np.ndarray:
    """A boolean array over the vocabulary, true at ``ids``: one fancy-index answers it for a sequence."""
    table = np.zeros(vocab_size, dtype=bool)
    id_array = np.fromiter((int(i) for i in ids), dtype=np.int64)
    if id_array.size:
        if id_array.min() < 0 or id_array.max() >= vocab_size:
            raise ValueError(
                f"{what} ids must lie in [0, {vocab_size}), got {sorted(set(id_array.tolist()))}"
            )
        table[id_array] = True
    return table


def _greedy_word_fill(word_lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Which words, visited in the given order, Google's loop keeps: a word is taken while it fits in
    the remaining ``capacity`` and skipped when it would overflow.

    Vectorized by runs: the longest prefix that fits is taken at once with a cumulative sum, then the
    scan jumps to the next word short enough for what is left. Each round takes at least one word, so
    there are at most ``capacity`` rounds (about 1 to 3 in practice) whatever the number of words.
    """
    taken = np.zeros(word_lengths.size, dtype=bool)
    start, room = 0, capacity
    while room > 0 and start < word_lengths.size:
        cumulative = np.cumsum(word_lengths[start:])
        n_fit = int(np.searchsorted(cumulative, room, side="right"))
        if n_fit:
            taken[start : start + n_fit] = True
            room -= int(cumulative[n_fit - 1])
            start += n_fit
        if room == 0 or start >= word_lengths.size:
            break
        # The word at ``start`` overflows: skip ahead to the next one that fits, if any.
        fitting = np.flatnonzero(word_lengths[start:] <= room)
        if fitting.size == 0:
            break
        start += int(fitting[0])
    return taken


class TokenMasker:
    """Draws masked-LM predictions for one sequence at a time (see the module docstring for the rules)."""

    def __init__(
        self,
        config: MaskingConfig,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        continuation_token_ids: Iterable[int] = (),
    ):
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary of {vocab_size}")
        self.config = config
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.is_special = _id_lookup(self.vocab_size, special_token_ids, "special token")
        self.is_continuation = _id_lookup(self.vocab_size, continuation_token_ids, "continuation token")
        self.random_token_ids = np.flatnonzero(~self.is_special).astype(np.int64)
        if config.random_replace_prob > 0 and self.random_token_ids.size == 0:
            raise ValueError("random_replace_prob > 0 but every vocabulary id is a special token")
        # Thresholds on one uniform draw per piece: [0, a) -> [MASK], [a, b) -> random, [b, 1) -> kept.
        self._mask_below = config.mask_replace_prob
        self._random_below = config.mask_replace_prob + config.random_replace_prob

    @classmethod
    def from_tokenizer(cls, config: MaskingConfig, tokenizer: Any) -> TokenMasker:
        """Special ids are ``tokenizer.all_special_ids``; continuations, the vocabulary's ``##`` pieces."""
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; masked-LM pre-training needs one")
        continuation = [i for token, i in tokenizer.get_vocab().items() if token.startswith("##")]
        return cls(
            config,
            vocab_size=len(tokenizer),
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=tokenizer.all_special_ids,
            continuation_token_ids=continuation,
        )

    def mask(self, input_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Choose the positions to predict in one unpadded sequence and the token shown at each.

        Returns ``(positions, replacement_ids)``: positions sorted ascending (int64), replacement ids in
        the dtype of ``input_ids`` ([MASK], a random non-special id, or the original token).
        """
        ids = np.asarray(input_ids)
        if ids.ndim != 1:
            raise ValueError(f"mask() takes one 1-D sequence, got shape {ids.shape}")
        candidates = np.flatnonzero(~self.is_special[ids])
        num_to_predict = self.config.num_to_predict(ids.size)
        if self.config.whole_word_mask:
            positions = self._choose_whole_words(ids, candidates, num_to_predict, rng)
        else:
            positions = self._choose_tokens(candidates, num_to_predict, rng)
        return positions, self._replacements(ids[positions], rng)

    def _choose_tokens(
        self, candidates: np.ndarray, num_to_predict: int, rng: np.random.Generator
    ) -> np.ndarray:
        """A uniform random subset of ``num_to_predict`` candidates: the same distribution as Google's
        shuffle-then-take-the-first, via the smallest random keys (argpartition is O(n))."""
        if candidates.size <= num_to_predict:
            return candidates.astype(np.int64, copy=False)
        keys = rng.random(candidates.size)
        chosen = np.argpartition(keys, num_to_predict - 1)[:num_to_predict]
        return np.sort(candidates[chosen]).astype(np.int64, copy=False)

    def _choose_whole_words(
        self, ids: np.ndarray, candidates: np.ndarray, num_to_predict: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Whole words in random order, skipping those that would overflow ``num_to_predict``.

        A ``##`` piece continues the word of the candidate right before it; one that follows a special
        token (or starts the sequence) starts its own word. Google attaches such a piece to the last
        word before the [SEP], across the segment boundary; that is a quirk we do not copy.
        """
        if candidates.size == 0:
            return _EMPTY_POSITIONS
        continues = self.is_continuation[ids[candidates]]
        continues[0] = False
        continues[1:] &= candidates[1:] - candidates[:-1] == 1
        word_starts = np.flatnonzero(~continues)
        word_ends = np.empty_like(word_starts)
        word_ends[:-1] = word_starts[1:]
        word_ends[-1] = candidates.size
        word_lengths = word_ends - word_starts
        order = rng.permutation(word_starts.size)
        taken_words = order[_greedy_word_fill(word_lengths[order], num_to_predict)]
        word_of_piece = np.cumsum(~continues) - 1
        chosen_word = np.zeros(word_starts.size, dtype=bool)
        chosen_word[taken_words] = True
        return candidates[chosen_word[word_of_piece]].astype(np.int64, copy=False)

    def _replacements(self, originals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per piece, independently: [MASK], a uniformly random non-special id, or the original."""
        draws = rng.random(originals.size)
        out = originals.copy()
        out[draws < self._mask_below] = self.mask_token_id
        to_random = (draws >= self._mask_below) & (draws < self._random_below)
        n_random = int(np.count_nonzero(to_random))
        if n_random:
            picks = rng.integers(0, self.random_token_ids.size, size=n_random)
            out[to_random] = self.random_token_ids[picks]
        return out


def apply_masks(
    input_ids: np.ndarray, positions: np.ndarray, replacement_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The model's input and the MLM labels for one sequence.

    Returns ``(masked_input_ids, labels)``: labels (int64) hold the original id at each predicted
    position and :data:`IGNORE_INDEX` elsewhere, the convention of transformers' ``BertForPreTraining``.
    """
    ids = np.asarray(input_ids)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[positions] = ids[positions]
    masked = ids.copy()
    masked[positions] = replacement_ids
    return masked, labels
