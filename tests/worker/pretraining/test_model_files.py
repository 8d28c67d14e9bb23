"""The checkpoint validator shared by uploads and the loader: NaN and infinite weights found without torch;
the rules the loader and the run submission share, and the tokenizer as its files list it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.pretraining import model_files
from worker.pretraining.model_files import (
    non_finite_tensor,
    segment_types_error,
    token_types,
    tokenizer_vocabulary,
    vocabulary_error,
)
from worker.pretraining.tokenizer import load_tokenizer

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _save(directory: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    return ["model.safetensors"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")])
def test_every_float_type_names_the_tensor_and_the_kind(
    tmp_path: Path, dtype: torch.dtype, value: float, kind: str
) -> None:
    bad = torch.zeros(7, 5, dtype=dtype)
    bad[6, 4] = value  # the very last value
    files = _save(
        tmp_path,
        {"a.first": torch.ones(3, dtype=dtype), "b.broken": bad, "c.also_broken": bad.clone()},
    )
    assert non_finite_tensor(tmp_path, files) == ("b.broken", kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_finite_values_are_finite(tmp_path: Path, dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    values = torch.tensor([info.max, -info.max, info.tiny, info.tiny / 4, -0.0, 0.0, info.min], dtype=dtype)
    files = _save(tmp_path, {"extremes": values, "ids": torch.full((4,), -1, dtype=torch.int64)})
    assert non_finite_tensor(tmp_path, files) is None  # all exponent bits set only in an int: skipped


def test_a_value_past_a_chunk_boundary_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_files, "_SCAN_CHUNK", 64)  # 16 float32 values a read
    weights = torch.zeros(1000)
    weights[517] = math.nan
    files = _save(tmp_path, {"weights": weights})
    assert non_finite_tensor(tmp_path, files) == ("weights", "NaN")
    weights[517] = 0.0
    assert non_finite_tensor(tmp_path, _save(tmp_path, {"weights": weights})) is None


def test_the_tokenizer_files_list_the_tokens_the_loader_counts(
    tmp_path: Path, tokenizer_dir: Path, minilm_dir: Path
) -> None:
    # The API judges a tokenizer by its files, without transformers; the loader by the tokenizer it loads.
    vocab_only = tmp_path / "vocab-only"
    vocab_only.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, vocab_only / name)
    for directory in (tokenizer_dir, vocab_only, minilm_dir):
        tokens = tokenizer_vocabulary(directory)
        loaded = load_tokenizer(directory)
        assert tokens == set(loaded.get_vocab()) and tokens is not None and len(tokens) == len(loaded)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert tokenizer_vocabulary(nothing) is None
    (nothing / "tokenizer.json").write_text('{"model": {"type": "Custom"}}')
    assert tokenizer_vocabulary(nothing) is None  # a vocabulary it cannot read is not judged
    (nothing / "tokenizer.json").write_text(
        '{"model": {"vocab": [["a", 0.0], ["b", -1.0]]}, "added_tokens": []}'
    )
    assert tokenizer_vocabulary(nothing) == {"a", "b"}  # Unigram's [token, score] pairs


def test_the_rules_of_the_model_files() -> None:
    assert vocabulary_error(30522, 30522) is None and vocabulary_error(30523, None) is None
    assert vocabulary_error(30524, 30522) == (
        "the tokenizer has 30524 tokens but the embedding matrix only 30522 rows; ids beyond it would crash "
        "training. Use the tokenizer the checkpoint was trained with."
    )
    assert token_types({"type_vocab_size": 1}) == 1 and token_types({}) is None
    assert segment_types_error(True, 1) is not None and "set nsp to false" in (
        segment_types_error(True, 1) or ""
    )
    assert segment_types_error(False, 1) is None and segment_types_error(True, 2) is None
    assert segment_types_error(True, None) is None


def test_what_an_upload_keeps_of_bertpts_own_files() -> None:
    """A run's manifests are checkpoint files (provenance); a checkpoint's training state is left out of
    an upload, pickles included, and never taken for a model file."""
    left_out, kept = model_files.is_left_out_of_uploads, model_files.is_model_file
    for manifest in model_files.PROVENANCE_FILES:
        assert kept(manifest) and not left_out(manifest)
    for state in ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state_3.pth", "trainer_state.json"):
        assert left_out(state) and not kept(state)
    assert not left_out("pytorch_model.bin") and not left_out("weights.pt")
