"""Masked-LM masking: Google's counts and 80/10/10 split, special tokens, whole-word masking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.masking import (
    IGNORE_INDEX,
    MaskingConfig,
    TokenMasker,
    _greedy_word_fill,
    apply_masks,
    instance_rng,
)

NUM_SEQUENCES = 3000
MAX_SEQ_LENGTH = 128


def build_sequences(tokenizer, documents: list[list[str]], count: int, max_length: int) -> list[np.ndarray]:
    """``[CLS] A [SEP] B [SEP]`` from consecutive docstring sentences, cut to ``max_length``."""
    sentences = [sentence for doc in documents for sentence in doc][: count + 1]
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    half = (max_length - 3) // 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    return [
        np.array([cls, *first[:half], sep, *second[: max_length - 3 - min(len(first), half)], sep])
        for first, second in itertools.pairwise(encoded)
    ]


@pytest.fixture(scope="module")
def sequences(tokenizer, documents) -> list[np.ndarray]:
    return build_sequences(tokenizer, documents, NUM_SEQUENCES, MAX_SEQ_LENGTH)


def draw(masker: TokenMasker, sequences: list[np.ndarray], seed: int = 0):
    """Mask every sequence with its own generator; returns a list of (positions, replacements)."""
    return [masker.mask(ids, instance_rng(seed, 0, i)) for i, ids in enumerate(sequences)]


def replacement_shares(masker: TokenMasker, sequences, masks) -> tuple[float, float, float]:
    """(mask, random, kept) shares over all predicted positions."""
    originals = np.concatenate([ids[pos] for ids, (pos, _) in zip(sequences, masks, strict=True)])
    shown = np.concatenate([rep for _, rep in masks])
    masked = shown == masker.mask_token_id
    kept = (shown == originals) & ~masked
    total = shown.size
    return masked.sum() / total, (~masked & ~kept).sum() / total, kept.sum() / total


def words_of(masker: TokenMasker, ids: np.ndarray) -> list[list[int]]:
    """Reference word split, token by token: a ## piece joins the candidate right before it."""
    words: list[list[int]] = []
    for i, token in enumerate(ids.tolist()):
        if masker.is_special[token]:
            continue
        if masker.is_continuation[token] and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def test_fixture_tokenizer_is_a_real_wordpiece_vocabulary(tokenizer) -> None:
    # Everything below is meaningless on a 5-token vocabulary where every word is [UNK].
    assert len(tokenizer) > 1000, "the conftest tokenizer fixture did not load its vocab.txt"
    assert any(token.startswith("##") for token in tokenizer.get_vocab())


def test_config_defaults_match_google_and_hyperparameters() -> None:
    config = MaskingConfig()
    assert (config.masked_lm_prob, config.max_predictions_per_seq) == (0.15, 20)
    assert (config.mask_replace_prob, config.random_replace_prob, config.whole_word_mask) == (0.8, 0.1, False)
    h = Hyperparameters.model_validate(
        {"masked_lm_prob": 0.2, "max_predictions_per_seq": 30, "whole_word_mask": True}
    )
    assert MaskingConfig.from_hyperparameters(h) == MaskingConfig(0.2, 30, 0.8, 0.1, True)
    assert MaskingConfig.from_hyperparameters(h.preparation()) == MaskingConfig.from_hyperparameters(h)


@pytest.mark.parametrize(
    "fields",
    [
        {"masked_lm_prob": 0.0},
        {"masked_lm_prob": 1.0},
        {"max_predictions_per_seq": 0},
        {"mask_replace_prob": -0.1},
        {"mask_replace_prob": 0.8, "random_replace_prob": 0.3},
    ],
)
def test_config_rejects_invalid_values(fields) -> None:
    with pytest.raises(ValueError):
        MaskingConfig(**fields)


def test_num_to_predict_is_googles_formula() -> None:
    config = MaskingConfig()
    assert config.num_to_predict(128) == 19  # round(19.2)
    assert config.num_to_predict(10) == 2  # round(1.5): half to even
    assert config.num_to_predict(3) == 1  # round(0.45) = 0, raised to 1
    assert config.num_to_predict(512) == 20  # capped
    assert MaskingConfig(masked_lm_prob=0.5).num_to_predict(5) == 2  # round(2.5) == 2 under Python 3


def test_from_tokenizer_builds_the_lookups(tokenizer) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(), tokenizer)
    vocab = tokenizer.get_vocab()
    assert masker.vocab_size == len(tokenizer)
    assert masker.mask_token_id == tokenizer.mask_token_id
    assert set(np.flatnonzero(masker.is_special).tolist()) == set(tokenizer.all_special_ids)
    assert set(np.flatnonzero(masker.is_continuation).tolist()) == {
        i for token, i in vocab.items() if token.startswith("##")
    }
    assert not masker.is_special[masker.random_token_ids].any()
    assert masker.random_token_ids.size == len(tokenizer) - len(set(tokenizer.all_special_ids))


def test_constructor_rejects_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError):
        TokenMasker(MaskingConfig(), vocab_size=10, mask_token_id=4, special_token_ids=[0, 12])
    with pytest.raises(ValueError):
        TokenMasker(MaskingConfig(), vocab_size=10, mask_token_id=10, special_token_ids=[0])


def test_masked_count_is_the_formula_for_every_sequence(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(), tokenizer)
    masks = draw(masker, sequences)
    config = masker.config
    for ids, (positions, replacements) in zip(sequences, masks, strict=True):
        candidates = int((~masker.is_special[ids]).sum())
        assert positions.size == min(config.num_to_predict(ids.size), candidates)
        assert replacements.shape == positions.shape
    share = sum(p.size for p, _ in masks) / sum(ids.size for ids in sequences)
    assert share == pytest.approx(0.15, abs=0.01)


def test_positions_are_sorted_unique_and_never_special(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(
        MaskingConfig(masked_lm_prob=0.6, max_predictions_per_seq=200), tokenizer
    )
    special = np.array(tokenizer.all_special_ids)
    rng = np.random.default_rng(0)
    # Sprinkle every special token ([PAD], [UNK], [MASK] included) into the sequences.
    stressed = []
    for ids in sequences[:500]:
        ids = ids.copy()
        ids[rng.integers(1, ids.size - 1, size=ids.size // 4)] = rng.choice(special, size=ids.size // 4)
        stressed.append(ids)
    for ids, (positions, _) in zip(stressed, draw(masker, stressed), strict=True):
        assert np.all(np.diff(positions) > 0)
        assert not np.isin(ids[positions], special).any()
        assert positions.size == min(
            masker.config.num_to_predict(ids.size), int((~np.isin(ids, special)).sum())
        )


def test_sequences_without_candidates_and_tiny_ones() -> None:
    masker = TokenMasker(MaskingConfig(), vocab_size=20, mask_token_id=4, special_token_ids=range(5))
    rng = np.random.default_rng(0)
    positions, replacements = masker.mask(np.array([2, 3]), rng)
    assert positions.size == 0 and replacements.size == 0
    positions, _ = masker.mask(np.array([2, 7, 3]), rng)
    assert positions.tolist() == [1]
    with pytest.raises(ValueError):
        masker.mask(np.array([[2, 7, 3]]), rng)


def test_replacements_follow_80_10_10(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(), tokenizer)
    masks = draw(masker, sequences)
    masked, random, kept = replacement_shares(masker, sequences, masks)
    assert masked == pytest.approx(0.8, abs=0.02)
    assert random == pytest.approx(0.1, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize(("mask_p", "random_p"), [(0.5, 0.5), (0.0, 0.0), (0.6, 0.3), (1.0, 0.0)])
def test_replacement_split_is_configurable(tokenizer, sequences, mask_p, random_p) -> None:
    config = MaskingConfig(mask_replace_prob=mask_p, random_replace_prob=random_p)
    masker = TokenMasker.from_tokenizer(config, tokenizer)
    masked, random, kept = replacement_shares(masker, sequences, draw(masker, sequences))
    # A random replacement equals the original 1 time in ~4000: it counts as kept, hence the tolerance.
    assert masked == pytest.approx(mask_p, abs=0.02)
    assert random == pytest.approx(random_p, abs=0.02)
    assert kept == pytest.approx(1.0 - mask_p - random_p, abs=0.02)
    if mask_p + random_p == 1.0:
        assert kept < 0.002
    if mask_p == 0.0 and random_p == 0.0:
        assert kept == 1.0


def test_random_replacements_are_never_special(tokenizer, sequences) -> None:
    config = MaskingConfig(mask_replace_prob=0.0, random_replace_prob=1.0)
    masker = TokenMasker.from_tokenizer(config, tokenizer)
    shown = np.concatenate([rep for _, rep in draw(masker, sequences)])
    assert shown.size > 15_000
    assert not np.isin(shown, tokenizer.all_special_ids).any()
    # Uniform over the non-special vocabulary: most of it shows up.
    assert np.unique(shown).size > 0.9 * masker.random_token_ids.size


def test_same_generator_state_gives_the_same_mask(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(whole_word_mask=True), tokenizer)
    ids = sequences[0]
    first = masker.mask(ids, instance_rng(1, 2, 3))
    again = masker.mask(ids, instance_rng(1, 2, 3))
    other_epoch = masker.mask(ids, instance_rng(1, 3, 3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other_epoch[0])


def test_whole_words_are_chosen_whole_within_the_count(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(whole_word_mask=True), tokenizer)
    multi_piece_chosen = exactly_full = 0
    for ids, (positions, _) in zip(sequences, draw(masker, sequences), strict=True):
        num_to_predict = masker.config.num_to_predict(ids.size)
        chosen = set(positions.tolist())
        assert len(chosen) == positions.size <= num_to_predict
        room = num_to_predict - positions.size
        for word in words_of(masker, ids):
            inside = [i in chosen for i in word]
            assert all(inside) or not any(inside), "a word was split"
            if inside[0]:
                multi_piece_chosen += len(word) > 1
            else:
                # Google's greedy scan: a word is left out only if it could not fit at the end.
                assert len(word) > room
        exactly_full += room == 0
    assert multi_piece_chosen > 500
    assert exactly_full > 0.9 * len(sequences)


def test_whole_word_masking_keeps_80_10_10_per_piece(tokenizer, sequences) -> None:
    masker = TokenMasker.from_tokenizer(MaskingConfig(whole_word_mask=True), tokenizer)
    masks = draw(masker, sequences)
    masked, random, kept = replacement_shares(masker, sequences, masks)
    assert masked == pytest.approx(0.8, abs=0.02)
    assert random == pytest.approx(0.1, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)
    share = sum(p.size for p, _ in masks) / sum(ids.size for ids in sequences)
    assert share == pytest.approx(0.15, abs=0.015)


def test_continuation_after_a_special_token_starts_its_own_word() -> None:
    # ids 0-4 special ([CLS]=2, [SEP]=3), 10-14 are "##" pieces.
    config = MaskingConfig(masked_lm_prob=0.3, whole_word_mask=True)
    masker = TokenMasker(
        config,
        vocab_size=20,
        mask_token_id=4,
        special_token_ids=range(5),
        continuation_token_ids=range(10, 15),
    )
    ids = np.array([2, 5, 10, 11, 6, 3, 12, 7, 13, 3])  # words: [1 2 3] [4] | [6] [7 8]
    words = [{1, 2, 3}, {4}, {6}, {7, 8}]
    assert [set(w) for w in words_of(masker, ids)] == words
    seen = set()
    for seed in range(200):
        positions, _ = masker.mask(ids, np.random.default_rng(seed))
        chosen = set(positions.tolist())
        assert len(chosen) <= config.num_to_predict(ids.size) == 3
        assert all(word <= chosen or not word & chosen for word in words)
        seen.add(frozenset(chosen))
    # Piece 6 is taken without the word before the [SEP] and without the word after it.
    assert frozenset({4, 6}) in seen and frozenset({1, 2, 3}) in seen


def _googles_word_loop(lengths: list[int], capacity: int) -> list[bool]:
    """google-research/bert's loop over shuffled words, for reference."""
    taken, count = [], 0
    for length in lengths:
        if count >= capacity or count + length > capacity:
            taken.append(False)
            continue
        taken.append(True)
        count += length
    return taken


def test_greedy_word_fill_matches_googles_loop() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lengths = rng.integers(1, 6, size=int(rng.integers(0, 40)))
        capacity = int(rng.integers(1, 30))
        expected = _googles_word_loop(lengths.tolist(), capacity)
        assert _greedy_word_fill(lengths, capacity).tolist() == expected


def test_apply_masks_writes_replacements_and_labels() -> None:
    ids = np.array([2, 10, 11, 12, 3], dtype=np.int32)
    masked, labels = apply_masks(ids, np.array([1, 3]), np.array([4, 15], dtype=np.int32))
    assert masked.tolist() == [2, 4, 11, 15, 3]
    assert masked.dtype == ids.dtype and labels.dtype == np.int64
    assert labels.tolist() == [IGNORE_INDEX, 10, IGNORE_INDEX, 12, IGNORE_INDEX]
    assert ids.tolist() == [2, 10, 11, 12, 3]  # the input is left alone
