"""Loading base checkpoints: what is refused, what is reported, what is kept."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import save_checkpoint, tiny_config, with_one_bad_weight
from worker.pretraining.base_model import (
    NEWLY_INITIALIZED,
    load_base_model,
    non_finite_parameter,
    resolve_base,
)
from worker.pretraining.model_files import BaseModelError, tokenizer_vocabulary, vocabulary_error


def test_full_checkpoint_loads_without_warnings(tiny_bert_dir: Path) -> None:
    loaded = load_base_model(tiny_bert_dir)
    model = loaded.model
    assert type(model).__name__ == "BertForPreTraining"
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    assert loaded.newly_initialized == [] and loaded.warnings == []
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert loaded.tokenizer.is_fast and len(loaded.tokenizer) <= model.config.vocab_size


def test_bare_encoder_reports_new_heads_and_keeps_encoder(tiny_encoder_dir: Path) -> None:
    from safetensors.torch import load_file

    loaded = load_base_model(tiny_encoder_dir)
    new = set(loaded.newly_initialized)
    assert new == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    (warning,) = loaded.warnings
    assert warning.code == NEWLY_INITIALIZED
    assert set(warning.parameters or []) == new
    assert "50%" in warning.message and "bare encoder" in warning.message
    # The un-prefixed encoder weights were mapped onto bert.*: compare with the file itself.
    saved = load_file(str(tiny_encoder_dir / "model.safetensors"))
    state = loaded.model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[f"bert.{key}"], value), key
    assert loaded.model.cls.predictions.decoder.weight is loaded.model.bert.embeddings.word_embeddings.weight


def test_masked_lm_checkpoint_is_said_to_lack_only_the_nsp_head(tmp_path: Path, tokenizer: Any) -> None:
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    directory = save_checkpoint(BertForMaskedLM(tiny_config(tokenizer)), tokenizer, tmp_path / "mlm")
    loaded = load_base_model(directory)
    assert set(loaded.newly_initialized) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }
    (warning,) = loaded.warnings
    assert "bare encoder" not in warning.message
    assert "masked-LM head but no next-sentence head" in warning.message
    assert "next-sentence accuracy about 50%" in warning.message
    assert "masked-LM loss well above" not in warning.message  # its MLM head was loaded


def test_next_sentence_checkpoint_is_said_to_lack_only_the_mlm_head(tmp_path: Path, tokenizer: Any) -> None:
    from transformers import BertForNextSentencePrediction

    torch.manual_seed(0)
    model = BertForNextSentencePrediction(tiny_config(tokenizer))
    loaded = load_base_model(save_checkpoint(model, tokenizer, tmp_path / "nsp"))
    assert all(p.startswith("cls.predictions.") for p in loaded.newly_initialized)
    (warning,) = loaded.warnings
    assert (
        "bare encoder" not in warning.message
        and "next-sentence head but no masked-LM head" in warning.message
    )
    assert "masked-LM loss well above" in warning.message and "50%" not in warning.message


def test_minilm_only_heads_are_new(minilm_dir: Path) -> None:
    from safetensors import safe_open

    loaded = load_base_model(minilm_dir)
    assert loaded.newly_initialized, "MiniLM has no pre-training heads"
    assert all(key.startswith("cls.") for key in loaded.newly_initialized), loaded.newly_initialized
    assert loaded.model.config.num_hidden_layers == 6 and loaded.model.config.hidden_size == 384
    with safe_open(str(minilm_dir / "model.safetensors"), framework="pt") as f:
        expected = f.get_tensor("encoder.layer.5.output.dense.weight")
    assert torch.equal(loaded.model.bert.encoder.layer[5].output.dense.weight.detach(), expected)


def test_non_bert_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tokenizer)))
    directory = save_checkpoint(model, tokenizer, tmp_path / "gpt2")
    with pytest.raises(BaseModelError, match="model_type 'gpt2' is not supported"):
        load_base_model(directory)


def test_pickle_only_is_refused_without_unpickling(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, directory)
    state = {k: v.clone() for k, v in load_base_model(tiny_bert_dir).model.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load must never be called on a base checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(BaseModelError, match=r"pickle weights.*save_pretrained"):
        load_base_model(directory)


def test_a_weight_that_is_not_finite_is_refused_naming_the_tensor(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    broken = with_one_bad_weight(tiny_bert_dir, tmp_path / "diverged")
    with pytest.raises(
        BaseModelError,
        match=r"parameter bert\.encoder\.layer\.1\.output\.dense\.weight holds NaN values in float32",
    ):
        load_base_model(broken)


def test_a_weight_beyond_float32_is_refused_naming_it(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "float64"
    shutil.copytree(tiny_bert_dir, directory)
    weights = {k: v.double() for k, v in load_file(directory / "model.safetensors").items()}
    weights["bert.encoder.layer.0.output.dense.weight"][0, 0] = 1e300  # finite in float64, not in float32
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        BaseModelError,
        match=r"parameter bert\.encoder\.layer\.0\.output\.dense\.weight holds Inf values in float32"
        r".*beyond float32's range",
    ):
        load_base_model(directory)


def test_vocab_size_disagreement_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    directory = tmp_path / "bad-config"
    shutil.copytree(tiny_bert_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] += 5
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(BaseModelError, match="vocab_size"):
        load_base_model(directory)


def test_tokenizer_larger_than_embeddings_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    from transformers import BertForPreTraining

    model = BertForPreTraining(tiny_config(tokenizer, vocab_size=len(tokenizer) - 10))
    directory = save_checkpoint(model, tokenizer, tmp_path / "small-vocab")
    with pytest.raises(BaseModelError, match="tokenizer has") as refused:
        load_base_model(directory)
    # The run submission reads the same count from the files, torch-free, and refuses with the same words.
    listed = tokenizer_vocabulary(directory)
    assert listed is not None
    assert str(refused.value) == f"{directory}: {vocabulary_error(len(listed), len(tokenizer) - 10)}"


def test_missing_directory_and_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BaseModelError, match="does not exist"):
        load_base_model(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="offline"):
        load_base_model("bertpt-tests/no-such-model")


def test_a_builtin_name_resolves_as_in_the_service(minilm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a built-in never needs the hub
    assert resolve_base("minilm-l6-h384-uncased") == minilm_dir
    assert resolve_base(minilm_dir) == minilm_dir


def test_an_unknown_name_is_told_the_real_names_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError) as refused:
        resolve_base("minilm")
    message = str(refused.value)
    assert "built-in model (minilm-l6-h384-uncased)" in message
    assert "Did you mean 'minilm-l6-h384-uncased'?" in message
    # A hub id, also as the service writes it: how to fetch it where the hub is reachable, and use it here.
    with pytest.raises(BaseModelError) as refused:
        resolve_base("hf:bertpt-tests/no-such-model")
    message = str(refused.value)
    assert "`hf download bertpt-tests/no-such-model --include '*.json'" in message
    assert "--local-dir DIR`, then pass --base DIR" in message and "Did you mean" not in message


def test_non_finite_parameter_names_the_first_one(tokenizer: Any) -> None:
    from transformers import BertForPreTraining

    model = BertForPreTraining(tiny_config(tokenizer))
    assert non_finite_parameter(model) is None
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[2, 3] = math.inf
        model.cls.seq_relationship.bias[0] = math.nan
    assert non_finite_parameter(model) == "bert.encoder.layer.1.output.dense.weight"
