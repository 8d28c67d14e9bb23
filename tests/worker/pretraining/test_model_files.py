"""The checkpoint validator shared by uploads and the loader: NaN and infinite weights found without torch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from worker.pretraining import model_files
from worker.pretraining.model_files import non_finite_tensor

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
