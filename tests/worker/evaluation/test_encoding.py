"""Tokenized examples, the sequence length from the data, and loading a pre-training checkpoint under a
classification head."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.evaluation.encoding import check_model_dir, collate, encode, load_under_head, resolve_max_length
from worker.evaluation.labelled import LabelledExample
from worker.pretraining.model_files import BaseModelError


def test_a_pair_is_two_segments_and_the_length_comes_from_the_data(tiny_bert_dir: Path) -> None:
    import torch

    checked = check_model_dir("tiny", tiny_bert_dir)
    examples = [
        LabelledExample(text="the of", text_pair="and to", label="x"),
        LabelledExample(text="the", text_pair="a", label="y"),
    ]
    assert resolve_max_length(checked, examples, None) == 7  # [CLS] the of [SEP] and to [SEP]
    assert resolve_max_length(checked, examples, 20) == 20
    encoded = encode(checked, examples, 7)
    assert encoded.token_type_ids[0] == [0, 0, 0, 0, 1, 1, 1]
    batch = collate(encoded, [0, 1], torch.device("cpu"))
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0] * 2]
    assert batch["input_ids"][1, 5:].tolist() == [checked.tokenizer.pad_token_id] * 2


def test_the_length_is_capped_at_the_position_embeddings(tiny_bert_dir: Path) -> None:
    checked = check_model_dir("tiny", tiny_bert_dir)
    assert checked.max_positions == 64
    long = [LabelledExample(text=" ".join(["the"] * 200), label="x")]
    assert resolve_max_length(checked, long, None) == 64
    assert resolve_max_length(checked, long, 512) == 64
    assert len(encode(checked, long, 64).input_ids[0]) == 64


def test_a_fresh_classifier_is_expected_and_not_reported(tiny_bert_dir: Path, tiny_encoder_dir: Path) -> None:
    from transformers import BertForSequenceClassification

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        for directory in (tiny_bert_dir, tiny_encoder_dir):  # pre-training heads; no heads and no pooler
            model = load_under_head(
                BertForSequenceClassification, check_model_dir(directory.name, directory), num_labels=3
            )
            assert model.classifier.out_features == 3
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


def test_a_directory_without_a_bert_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(BaseModelError, match=r"^mine: "):
        check_model_dir("mine", tmp_path)
