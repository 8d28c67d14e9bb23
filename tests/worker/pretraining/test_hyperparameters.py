"""The hyperparameter schema: torch_compile's three settings, as JSON booleans and as words."""

from __future__ import annotations

from typing import Any

import pytest

from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters


@pytest.mark.parametrize(
    ("given", "read"),
    [(True, True), (False, False), ("auto", "auto"), ("true", True), ("False", False), ("AUTO", "auto")],
)
def test_torch_compile_is_true_false_or_auto(given: Any, read: Any) -> None:
    assert load_hyperparameters({"torch_compile": given}).torch_compile == read


def test_torch_compile_defaults_to_auto_and_refuses_other_values_with_one_message() -> None:
    assert Hyperparameters().torch_compile == "auto"
    for given in ("yes", 1, None, "maybe"):
        with pytest.raises(HyperparameterError) as refused:
            load_hyperparameters({"torch_compile": given})
        assert refused.value.errors == [("torch_compile", f"true, false or auto, got {given!r}")]
