"""The pre-training batch collator: padding, segments, labels, gathered-MLM arrays, mask keys."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.masking import IGNORE_INDEX, MaskingConfig, TokenMasker, apply_masks, instance_rng

SEED = 1234


def build_instances(tokenizer, documents: list[list[str]], count: int) -> list[dict]:
    """``[CLS] A [SEP] B [SEP]`` instances of varied lengths from consecutive docstring sentences."""
    sentences = [sentence for doc in documents for sentence in doc][: count + 1]
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    instances = []
    for index, (first, second) in enumerate(itertools.pairwise(encoded)):
        a, b = first[:60], second[:60]
        instances.append(
            {
                "input_ids": np.array([cls, *a, sep, *b, sep], dtype=np.int32),
                "segment_b_start": len(a) + 2,
                "next_sentence_label": index % 2,
                "index": index,
            }
        )
    return instances


@pytest.fixture(scope="module")
def instances(tokenizer, documents) -> list[dict]:
    return build_instances(tokenizer, documents, 400)


@pytest.fixture(scope="module")
def masker(tokenizer) -> TokenMasker:
    return TokenMasker.from_tokenizer(MaskingConfig(), tokenizer)


@pytest.fixture
def collator(tokenizer, masker) -> PretrainingCollator:
    return PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, seed=SEED)


def real_tokens(batch: dict[str, torch.Tensor], row: int, name: str) -> torch.Tensor:
    return batch[name][row, : int(batch["attention_mask"][row].sum())]


def valid_predictions(batch: dict[str, torch.Tensor], row: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = batch["masked_lm_labels"][row] != IGNORE_INDEX
    return batch["masked_lm_positions"][row][valid], batch["masked_lm_labels"][row][valid]


def test_shapes_dtypes_padding_and_segments(tokenizer, instances, collator) -> None:
    chosen = instances[:16]
    batch = collator(chosen)
    lengths = [len(inst["input_ids"]) for inst in chosen]
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and max(lengths) <= width < max(lengths) + 8
    for name in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        assert batch[name].shape == (16, width) and batch[name].dtype == torch.long
    assert batch["next_sentence_label"].tolist() == [inst["next_sentence_label"] for inst in chosen]
    assert batch["next_sentence_label"].dtype == torch.long
    for row, inst in enumerate(chosen):
        n, b_start = lengths[row], inst["segment_b_start"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["token_type_ids"][row].tolist() == [0] * b_start + [1] * (n - b_start) + [0] * (
            width - n
        )
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        # [CLS] and both [SEP]s are never predicted, so they reach the model unchanged.
        for position in (0, b_start - 1, n - 1):
            assert batch["input_ids"][row, position] == inst["input_ids"][position]
            assert batch["labels"][row, position] == IGNORE_INDEX


def test_pad_to_multiple_of(tokenizer, instances, masker) -> None:
    exact = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, pad_to_multiple_of=None)
    by_64 = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, pad_to_multiple_of=64)
    chosen = instances[:8]
    longest = max(len(inst["input_ids"]) for inst in chosen)
    assert exact(chosen)["input_ids"].shape[1] == longest
    assert by_64(chosen)["input_ids"].shape[1] == -(-longest // 64) * 64
    sixteen = {**chosen[0], "input_ids": chosen[0]["input_ids"][:16], "segment_b_start": 8}
    assert by_64([sixteen])["input_ids"].shape[1] == 64
    assert PretrainingCollator(pad_token_id=0, masker=masker)([sixteen])["input_ids"].shape[1] == 16


def test_labels_hold_the_originals_at_masked_positions_only(instances, collator, masker) -> None:
    chosen = instances[:32]
    batch = collator(chosen)
    for row, inst in enumerate(chosen):
        original = torch.from_numpy(inst["input_ids"].astype(np.int64))
        labels = real_tokens(batch, row, "labels")
        shown = real_tokens(batch, row, "input_ids")
        predicted = labels != IGNORE_INDEX
        assert int(predicted.sum()) == masker.config.num_to_predict(len(original))
        assert torch.equal(labels[predicted], original[predicted])
        assert torch.equal(shown[~predicted], original[~predicted])


def test_gathered_arrays_agree_with_labels_and_inputs(instances, collator, masker) -> None:
    chosen = instances[:32]
    batch = collator(chosen)
    positions, mlm_labels = batch["masked_lm_positions"], batch["masked_lm_labels"]
    assert positions.dtype == mlm_labels.dtype == torch.long
    counts = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
    assert positions.shape == mlm_labels.shape == (32, int(counts.max()))
    gathered_inputs = batch["input_ids"].gather(1, positions)
    for row, inst in enumerate(chosen):
        valid_positions, valid_labels = valid_predictions(batch, row)
        assert len(valid_positions) == counts[row]
        assert torch.equal(batch["labels"][row, valid_positions], valid_labels)
        assert (positions[row, len(valid_positions) :] == 0).all()
        # Gathering the model's input at the positions gives what the masker put there.
        drawn_positions, replacements = masker.mask(inst["input_ids"], instance_rng(SEED, 0, inst["index"]))
        assert valid_positions.tolist() == drawn_positions.tolist()
        assert gathered_inputs[row, : len(replacements)].tolist() == replacements.tolist()


def test_gathered_mlm_loss_equals_the_full_one(instances, collator, masker) -> None:
    batch = collator(instances[:8])
    torch.manual_seed(0)
    hidden = torch.randn(*batch["input_ids"].shape, 16)
    decoder = torch.nn.Linear(16, masker.vocab_size)
    full = torch.nn.functional.cross_entropy(decoder(hidden).flatten(0, 1), batch["labels"].flatten())
    index = batch["masked_lm_positions"][..., None].expand(-1, -1, hidden.shape[-1])
    gathered = torch.nn.functional.cross_entropy(
        decoder(hidden.gather(1, index)).flatten(0, 1), batch["masked_lm_labels"].flatten()
    )
    assert torch.allclose(full, gathered, atol=1e-5)


def test_masks_are_keyed_by_seed_epoch_and_index(tokenizer, instances, masker, collator) -> None:
    chosen = instances[:16]
    first = collator(chosen)
    resumed = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, seed=SEED)
    assert all(torch.equal(first[k], v) for k, v in resumed(chosen).items())
    collator.epoch = 1
    second_epoch = collator(chosen)
    assert not torch.equal(first["labels"], second_epoch["labels"])
    other_seed = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, seed=SEED + 1)
    assert not torch.equal(first["labels"], other_seed(chosen)["labels"])
    # The mask is exactly the masker's draw from the instance's own generator.
    inst = chosen[3]
    positions, replacements = masker.mask(inst["input_ids"], instance_rng(SEED, 1, inst["index"]))
    masked, labels = apply_masks(inst["input_ids"], positions, replacements)
    assert real_tokens(second_epoch, 3, "input_ids").tolist() == masked.tolist()
    assert real_tokens(second_epoch, 3, "labels").tolist() == labels.tolist()


def test_batch_order_does_not_change_any_row(instances, collator) -> None:
    chosen = instances[:24]
    forward = collator(chosen)
    backward = collator(chosen[::-1])
    for name, tensor in forward.items():
        assert torch.equal(tensor, backward[name].flip(0)), name


def test_masks_do_not_depend_on_the_rest_of_the_batch(instances, collator) -> None:
    target = instances[7]
    alone = collator([target])
    crowded = collator([instances[100], instances[200], target, instances[300]])
    for name in ("input_ids", "token_type_ids", "labels"):
        assert torch.equal(real_tokens(alone, 0, name), real_tokens(crowded, 2, name))
    for got, expected in zip(valid_predictions(crowded, 2), valid_predictions(alone, 0), strict=True):
        assert torch.equal(got, expected)


def test_static_masks_are_used_exactly(tokenizer, instances, masker) -> None:
    rng = np.random.default_rng(0)
    stored = []
    for inst in instances[:12]:
        positions, replacements = masker.mask(inst["input_ids"], rng)
        stored.append({**inst, "masked_lm_positions": positions, "masked_lm_ids": replacements})
    static = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=None)
    batch = static(stored)
    static.epoch = 5
    assert torch.equal(batch["input_ids"], static(stored)["input_ids"])  # epochs do not matter
    for row, inst in enumerate(stored):
        masked, labels = apply_masks(inst["input_ids"], inst["masked_lm_positions"], inst["masked_lm_ids"])
        assert real_tokens(batch, row, "input_ids").tolist() == masked.tolist()
        assert real_tokens(batch, row, "labels").tolist() == labels.tolist()
        positions, _ = valid_predictions(batch, row)
        assert positions.tolist() == inst["masked_lm_positions"].tolist()


def test_static_mode_needs_stored_masks(tokenizer, instances) -> None:
    static = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=None)
    with pytest.raises(ValueError, match="masked_lm_positions"):
        static(instances[:2])
    bad = {**instances[0], "masked_lm_positions": np.array([500]), "masked_lm_ids": np.array([4])}
    with pytest.raises(ValueError, match="outside"):
        static([bad])


def test_fixed_prediction_width(tokenizer, instances, masker) -> None:
    fixed = PretrainingCollator(
        pad_token_id=tokenizer.pad_token_id, masker=masker, max_predictions_per_seq=20
    )
    batch = fixed(instances[:4])
    assert batch["masked_lm_positions"].shape == batch["masked_lm_labels"].shape == (4, 20)
    too_narrow = PretrainingCollator(
        pad_token_id=tokenizer.pad_token_id, masker=masker, max_predictions_per_seq=2
    )
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        too_narrow(instances[:4])


def test_nsp_off_single_segment_and_whole_word_masking(tokenizer, instances) -> None:
    wwm = TokenMasker.from_tokenizer(MaskingConfig(whole_word_mask=True), tokenizer)
    collator = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=wwm, seed=SEED)
    single = [
        {**inst, "segment_b_start": len(inst["input_ids"]), "next_sentence_label": 0}
        for inst in instances[:8]
    ]
    batch = collator(single)
    assert int(batch["token_type_ids"].sum()) == 0
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) > 0).all()


def test_rejects_an_empty_batch_and_bad_settings(masker) -> None:
    with pytest.raises(ValueError):
        PretrainingCollator(pad_token_id=0, masker=masker)([])
    with pytest.raises(ValueError):
        PretrainingCollator(pad_token_id=0, masker=masker, pad_to_multiple_of=0)
    with pytest.raises(ValueError):
        PretrainingCollator(pad_token_id=0, masker=masker, seed=-1)


def test_persistent_workers_draw_the_epoch_the_main_process_set(instances, collator) -> None:
    """DataLoader workers that live across epochs keep the collator they started with: the epoch set in the
    main process between epochs still reaches them (shared memory), so masks change from epoch to epoch."""
    data = instances[:24]
    loader = torch.utils.data.DataLoader(
        data, batch_size=8, collate_fn=collator, num_workers=1, persistent_workers=True
    )
    through_workers = []
    for epoch in (0, 1, 2):
        collator.epoch = epoch
        through_workers.append([batch["input_ids"] for batch in loader])
    workers = loader._iterator._workers  # type: ignore[union-attr]  # the same process served every epoch
    assert len(workers) == 1 and workers[0].is_alive()
    for epoch, batches in enumerate(through_workers):
        here = PretrainingCollator(pad_token_id=collator.pad_token_id, masker=collator.masker, seed=SEED)
        here.epoch = epoch
        expected = [here(data[start : start + 8])["input_ids"] for start in range(0, 24, 8)]
        assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))
    assert not torch.equal(through_workers[0][0], through_workers[1][0])
